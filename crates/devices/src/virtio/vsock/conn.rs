//! One vsock stream connection bridged to a Unix stream on the host: its state, the credit of
//! both directions, and the bounded buffer of guest data waiting for the host socket.
//!
//! Guest to host: data is written to the socket at once; what the socket does not take waits
//! in a buffer of at most [`CONN_BUF`] bytes, which is the `buf_alloc` the guest is told, so a
//! guest that respects its credit never overflows it (one that does not is reset). `fwd_cnt`
//! counts the bytes the socket took; a CREDIT_UPDATE goes out when the guest's view of the free
//! space is below half the buffer and stale.
//!
//! Host to guest: bytes are read from the socket only when the guest has credit
//! (`buf_alloc - (tx_cnt - fwd_cnt)` of its last header) and an rx buffer, straight into the
//! packet: nothing is buffered on this side, and a slow guest leaves the data in the socket,
//! which back-pressures the host process.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use super::packet::{op, Header, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::VsockStats;

/// Per-connection buffer of guest data for the host socket (the `buf_alloc` we advertise).
pub const CONN_BUF: u32 = 256 * 1024;

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: the REQUEST is queued or sent, the guest has not answered.
    Connecting,
    /// Both sides may exchange data.
    Established,
}

/// What the caller does with the connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep it.
    Keep,
    /// Forget it (the guest reset it, or the host never needs to know).
    Remove,
    /// Send the guest a RST and forget it.
    Reset,
}

/// A connection.
pub struct Conn {
    /// The host end.
    pub stream: UnixStream,
    /// Port on the host side.
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
    /// Its state.
    pub state: State,
    guest_cid: u64,
    // Credit the guest gives (host -> guest).
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    // Credit we give (guest -> host).
    rx_cnt: u32,
    fwd_cnt: u32,
    last_fwd_sent: u32,
    /// `OK <port>\n`, written to the host before any guest data.
    preamble: Vec<u8>,
    to_host: VecDeque<u8>,
    /// The socket may have data (edge-triggered readiness not yet consumed).
    pub readable: bool,
    writable: bool,
    /// SHUTDOWN flags the guest sent.
    peer_shutdown: u32,
    host_eof: bool,
    write_shut: bool,
    send_request: bool,
    send_response: bool,
    send_shutdown: bool,
    send_credit: bool,
}

impl Conn {
    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Conn {
            stream,
            local_port,
            peer_port,
            state: State::Connecting,
            guest_cid,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            preamble: Vec::new(),
            to_host: VecDeque::new(),
            readable: true,
            writable: true,
            peer_shutdown: 0,
            host_eof: false,
            write_shut: false,
            send_request: false,
            send_response: false,
            send_shutdown: false,
            send_credit: false,
        }
    }

    /// A host-initiated connection to guest port `peer_port`: a REQUEST is queued.
    pub fn to_guest(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Conn::new(stream, guest_cid, local_port, peer_port);
        c.send_request = true;
        c
    }

    /// A guest-initiated connection (its REQUEST `hdr`), connected to the host: a RESPONSE is
    /// queued.
    pub fn from_guest_request(stream: UnixStream, hdr: &Header) -> Self {
        let mut c = Conn::new(stream, hdr.src_cid, hdr.dst_port, hdr.src_port);
        c.state = State::Established;
        c.send_response = true;
        c.peer_credit_from(hdr);
        c
    }

    fn peer_credit_from(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn need_credit_update(&self) -> bool {
        let believed_used = self.rx_cnt.wrapping_sub(self.last_fwd_sent);
        self.state == State::Established
            && self.peer_shutdown & SHUTDOWN_SEND == 0
            && CONN_BUF.saturating_sub(believed_used) < CONN_BUF / 2
            && self.fwd_cnt != self.last_fwd_sent
    }

    fn can_read(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the guest was given the REQUEST of a host-initiated connection.
    pub fn request_sent(&self) -> bool {
        !self.send_request
    }

    /// Whether the connection has a packet for the guest.
    pub fn wants_rx(&self) -> bool {
        self.send_request
            || self.send_response
            || self.send_shutdown
            || self.send_credit
            || self.need_credit_update()
            || self.can_read()
    }

    /// Handles a packet the guest sent on this connection (type and op already checked).
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8], stats: &VsockStats) -> Action {
        self.peer_credit_from(hdr);
        match hdr.op {
            op::RST => return Action::Remove,
            op::RESPONSE if self.state == State::Connecting => {
                self.state = State::Established;
                self.preamble = format!("OK {}\n", self.local_port).into_bytes();
            }
            op::SHUTDOWN if self.state == State::Established => {
                self.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
            }
            op::RW if self.state == State::Established => {
                if self.peer_shutdown & SHUTDOWN_SEND != 0 || !self.take_guest_data(payload) {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    return Action::Reset;
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => self.send_credit = true,
            // A REQUEST on a live connection, or an answer out of place.
            _ => return Action::Reset,
        }
        self.flush(stats)
    }

    /// Appends guest data unless it exceeds the credit given.
    fn take_guest_data(&mut self, payload: &[u8]) -> bool {
        let used = self.rx_cnt.wrapping_sub(self.fwd_cnt);
        let fits = (used as usize)
            .checked_add(payload.len())
            .is_some_and(|n| n <= CONN_BUF as usize);
        if fits {
            self.to_host.extend(payload);
            self.rx_cnt = self.rx_cnt.wrapping_add(payload.len() as u32);
        }
        fits
    }

    /// The host socket became writable.
    pub fn set_writable(&mut self, stats: &VsockStats) -> Action {
        self.writable = true;
        self.flush(stats)
    }

    /// Writes what waits for the host socket, then acts on the guest's shutdown.
    pub fn flush(&mut self, stats: &VsockStats) -> Action {
        while self.writable && !(self.preamble.is_empty() && self.to_host.is_empty()) {
            let from_guest = self.preamble.is_empty();
            let chunk = if from_guest {
                self.to_host.as_slices().0
            } else {
                &self.preamble[..]
            };
            match self.stream.write(chunk) {
                Ok(0) => return Action::Reset,
                Ok(n) if from_guest => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                    stats.to_host_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(n) => {
                    self.preamble.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Action::Reset,
            }
        }
        if self.to_host.is_empty() && self.to_host.capacity() > 64 * 1024 {
            self.to_host.shrink_to(64 * 1024);
        }
        let drained = self.preamble.is_empty() && self.to_host.is_empty();
        if drained && self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if drained && self.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            // The guest closed its socket and waits for our RST to finish.
            return Action::Reset;
        }
        Action::Keep
    }

    fn header(&mut self, op: u16, len: u32, flags: u32) -> Header {
        self.last_fwd_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest, with at most `room` payload bytes put in `buf`; `None`
    /// when there is nothing to send; `Err` when the host socket failed (reset it).
    pub fn next_rx(
        &mut self,
        room: usize,
        buf: &mut Vec<u8>,
        stats: &VsockStats,
    ) -> Result<Option<Header>, io::Error> {
        buf.clear();
        if std::mem::take(&mut self.send_request) {
            return Ok(Some(self.header(op::REQUEST, 0, 0)));
        }
        if std::mem::take(&mut self.send_response) {
            return Ok(Some(self.header(op::RESPONSE, 0, 0)));
        }
        while self.can_read() {
            let n = (self.peer_credit() as usize)
                .min(room)
                .min(MAX_PAYLOAD as usize);
            if n == 0 {
                break;
            }
            buf.resize(n, 0);
            match self.stream.read(buf) {
                Ok(0) => {
                    self.host_eof = true;
                    self.send_shutdown = true;
                }
                Ok(k) => {
                    buf.truncate(k);
                    self.tx_cnt = self.tx_cnt.wrapping_add(k as u32);
                    stats.to_guest_bytes.fetch_add(k as u64, Ordering::Relaxed);
                    return Ok(Some(self.header(op::RW, k as u32, 0)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.clear();
        if std::mem::take(&mut self.send_shutdown) {
            return Ok(Some(self.header(op::SHUTDOWN, 0, SHUTDOWN_SEND)));
        }
        if std::mem::take(&mut self.send_credit) || self.need_credit_update() {
            return Ok(Some(self.header(op::CREDIT_UPDATE, 0, 0)));
        }
        Ok(None)
    }
}
