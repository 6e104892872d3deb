//! The host side of the vsock device: Unix sockets in Firecracker's convention.
//!
//! - Host to guest: a host process connects to the listening socket `PATH` and writes
//!   `CONNECT <port>\n`; the guest gets a REQUEST to `port` from a fresh host port, and when it
//!   answers RESPONSE the host process reads `OK <host port>\n`, then the bytes are bridged. A
//!   RST (nothing listens in the guest) closes the host connection.
//! - Guest to host: a REQUEST to port `P` connects to the Unix socket `PATH_P`; if nothing
//!   listens there the guest gets a RST.
//!
//! Every socket is non-blocking and edge-triggered in the worker's epoll set, with the slot
//! index as token. Connections (and host sockets still sending their CONNECT line) are limited
//! to [`MAX_CONNS`]; resets for packets without a connection wait in a queue of at most
//! [`MAX_RESETS`], and a full queue stops the tx queue until the guest takes them.
//!
//! Nothing holds a slot forever for want of an answer: a host socket that has not sent its
//! whole CONNECT line within [`LINE_TIMEOUT`] is closed, and a host connection whose REQUEST the
//! guest has not answered within [`CONNECT_TIMEOUT`] is closed (EOF, as for a guest RST) and
//! the guest gets a RST for it (none if the REQUEST never left the device), so a late RESPONSE
//! finds no connection and is answered with a RST. The deadlines are in [`Deadlines`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::conn::{Action, Conn, State};
use super::deadline::Deadlines;
use super::packet::{op, Header, HOST_CID, TYPE_STREAM};
use super::socket::connect_nonblocking;
use super::VsockStats;
use crate::legacy::GuestLog;
use crate::virtio::Poller;

mod host;
pub use host::parse_connect;

/// Most connections at once (host sockets waiting to send their CONNECT line included).
pub const MAX_CONNS: usize = 1024;
/// Most queued resets for packets that have no connection.
pub const MAX_RESETS: usize = 256;
/// Longest CONNECT line.
const MAX_LINE: usize = 32;
/// How long a host socket has to send its whole CONNECT line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guest has to answer a host connection's REQUEST (as Firecracker).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The listener's token.
const LISTENER: u32 = u32::MAX;
/// The deadline timer's token.
const TIMER: u32 = u32::MAX - 1;
/// First host port of host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

enum Slot {
    /// A host socket that has not sent its whole CONNECT line yet.
    Pending(UnixStream, Vec<u8>),
    Conn(Conn),
}

/// The connections of one activated device.
pub struct Muxer {
    cid: u64,
    path: PathBuf,
    listener: UnixListener,
    poller: Poller,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    keys: HashMap<(u32, u32), usize>,
    ready: VecDeque<usize>,
    queued: Vec<bool>,
    resets: VecDeque<Header>,
    next_port: u32,
    /// accept(2) failed for want of descriptors: the listener is not watched.
    listener_paused: bool,
    /// Most connections at once ([`MAX_CONNS`]; tests lower it).
    pub max_conns: usize,
    deadlines: Deadlines,
    /// How long a host socket has to send its CONNECT line ([`LINE_TIMEOUT`]; tests change it).
    pub line_timeout: Duration,
    /// How long the guest has to answer a REQUEST ([`CONNECT_TIMEOUT`]; tests change it).
    pub connect_timeout: Duration,
    stats: Arc<VsockStats>,
    log: GuestLog,
}

fn sock_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

impl Muxer {
    /// Serves guest `cid` with `listener` (bound at `path`), watched by `poller`.
    pub fn new(
        cid: u64,
        path: PathBuf,
        listener: UnixListener,
        poller: Poller,
        stats: Arc<VsockStats>,
    ) -> io::Result<Self> {
        poller.add(listener.as_raw_fd(), EventSet::IN, LISTENER)?;
        let deadlines = Deadlines::new()?;
        poller.add(deadlines.fd(), EventSet::IN, TIMER)?;
        Ok(Muxer {
            cid,
            path,
            listener,
            poller,
            slots: Vec::new(),
            free: Vec::new(),
            keys: HashMap::new(),
            ready: VecDeque::new(),
            queued: Vec::new(),
            resets: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            listener_paused: false,
            max_conns: MAX_CONNS,
            deadlines,
            line_timeout: LINE_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            stats,
            log: GuestLog::default(),
        })
    }

    /// Connections and pending host sockets.
    pub fn live(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Watches the listener again after accept(2) ran out of descriptors (called when a
    /// connection closes and on every queue notification, so a retry costs one accept).
    pub fn resume_listener(&mut self) {
        if std::mem::take(&mut self.listener_paused) {
            let fd = self.listener.as_raw_fd();
            let _ = self.poller.modify(fd, EventSet::IN, LISTENER);
        }
    }

    /// Too many resets wait for the guest: stop reading the tx queue.
    pub fn backlog_full(&self) -> bool {
        self.resets.len() >= MAX_RESETS
    }

    /// Whether a packet may be waiting for the guest.
    pub fn has_rx(&self) -> bool {
        !self.resets.is_empty() || !self.ready.is_empty()
    }

    fn insert(&mut self, slot: Slot) -> io::Result<usize> {
        let fd = match &slot {
            Slot::Pending(s, _) => s.as_raw_fd(),
            Slot::Conn(c) => c.stream.as_raw_fd(),
        };
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.queued.push(false);
                self.slots.len() - 1
            }
        };
        if let Err(e) = self.poller.add(fd, sock_events(), i as u32) {
            self.free.push(i);
            return Err(e);
        }
        self.slots[i] = Some(slot);
        Ok(i)
    }

    fn remove(&mut self, i: usize, reset: bool) {
        let Some(slot) = self.slots.get_mut(i).and_then(Option::take) else {
            return;
        };
        self.free.push(i);
        self.deadlines.cancel(i);
        self.resume_listener();
        if let Slot::Conn(c) = slot {
            self.keys.remove(&(c.local_port, c.peer_port));
            self.stats.active.fetch_sub(1, Ordering::Relaxed);
            if reset {
                self.push_reset(Header {
                    src_cid: HOST_CID,
                    dst_cid: self.cid,
                    src_port: c.local_port,
                    dst_port: c.peer_port,
                    type_: TYPE_STREAM,
                    op: op::RST,
                    ..Header::default()
                });
            }
        }
        // Dropping the socket closes it, which also takes it out of the epoll set.
    }

    fn push_reset(&mut self, h: Header) {
        // The tx queue stops at MAX_RESETS, so only a connection's own reset can exceed it,
        // and there are at most MAX_CONNS of those.
        self.resets.push_back(h);
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
    }

    fn schedule(&mut self, i: usize) {
        let wants = matches!(self.slots.get(i), Some(Some(Slot::Conn(c))) if c.wants_rx());
        if wants && !self.queued[i] {
            self.queued[i] = true;
            self.ready.push_back(i);
        }
    }

    fn apply(&mut self, i: usize, action: Action) {
        match action {
            Action::Keep => self.schedule(i),
            Action::Remove => self.remove(i, false),
            Action::Reset => self.remove(i, true),
        }
    }

    /// Handles a checked packet from the guest.
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        let bad_op = !(op::REQUEST..=op::CREDIT_REQUEST).contains(&hdr.op);
        if hdr.type_ != TYPE_STREAM || bad_op || (hdr.op != op::RW && hdr.len != 0) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            self.log.warn(format_args!(
                "virtio-vsock: packet type {} op {} len {} refused",
                hdr.type_, hdr.op, hdr.len
            ));
            if hdr.op != op::RST {
                self.push_reset(hdr.reset_reply());
            }
            return;
        }
        match self.keys.get(&(hdr.dst_port, hdr.src_port)).copied() {
            Some(i) => {
                let Some(Some(Slot::Conn(c))) = self.slots.get_mut(i) else {
                    return;
                };
                let was_connecting = c.state == State::Connecting;
                let action = c.on_guest_packet(hdr, payload, &self.stats);
                if was_connecting && c.state == State::Established {
                    self.deadlines.cancel(i);
                }
                self.apply(i, action);
            }
            None if hdr.op == op::REQUEST => self.connect_to_host(hdr),
            None if hdr.op == op::RST => {}
            None => self.push_reset(hdr.reset_reply()),
        }
    }

    fn connect_to_host(&mut self, hdr: &Header) {
        if self.live() >= self.max_conns {
            self.log.warn(format_args!(
                "virtio-vsock: connection limit: guest request to port {} reset",
                hdr.dst_port
            ));
            return self.push_reset(hdr.reset_reply());
        }
        let mut path = self.path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = match connect_nonblocking(path.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("virtio-vsock: {}: {e}", PathBuf::from(path).display());
                return self.push_reset(hdr.reset_reply());
            }
        };
        let conn = Conn::from_guest_request(stream, hdr);
        let key = (conn.local_port, conn.peer_port);
        match self.insert(Slot::Conn(conn)) {
            Ok(i) => {
                self.keys.insert(key, i);
                self.stats.connections.fetch_add(1, Ordering::Relaxed);
                self.stats.active.fetch_add(1, Ordering::Relaxed);
                self.schedule(i);
            }
            Err(_) => self.push_reset(hdr.reset_reply()),
        }
    }

    /// A watched socket (`token`) is ready with `events`.
    pub fn handle_fd(&mut self, token: u32, events: EventSet) {
        if token == LISTENER {
            return self.accept();
        }
        if token == TIMER {
            return self.expire(Instant::now());
        }
        let i = token as usize;
        match self.slots.get_mut(i) {
            Some(Some(Slot::Pending(..))) => self.read_line(i),
            Some(Some(Slot::Conn(c))) => {
                let readish =
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR;
                if events.intersects(readish) {
                    c.readable = true;
                }
                let action = if events.contains(EventSet::OUT) {
                    c.set_writable(&self.stats)
                } else {
                    Action::Keep
                };
                self.apply(i, action);
            }
            _ => {}
        }
    }

    /// The next packet for the guest with at most `room` payload bytes (put in `buf`).
    pub fn next_rx(&mut self, room: usize, buf: &mut Vec<u8>) -> Option<Header> {
        buf.clear();
        if let Some(h) = self.resets.pop_front() {
            return Some(h);
        }
        while let Some(i) = self.ready.pop_front() {
            self.queued[i] = false;
            let Some(Some(Slot::Conn(c))) = self.slots.get_mut(i) else {
                continue;
            };
            match c.next_rx(room, buf, &self.stats) {
                Ok(Some(h)) => {
                    // Round robin: back at the end if it has more.
                    self.schedule(i);
                    return Some(h);
                }
                Ok(None) => {}
                Err(_) => {
                    self.remove(i, true);
                    return self.resets.pop_front();
                }
            }
        }
        None
    }
}

impl Drop for Muxer {
    /// The device is reset (or goes away): every host socket closes with the muxer (its peer
    /// reads EOF), so the connections still open are no longer active.
    fn drop(&mut self) {
        let open = self
            .slots
            .iter()
            .filter(|s| matches!(s, Some(Slot::Conn(_))))
            .count();
        if open > 0 {
            tracing::debug!("virtio-vsock: {open} connections closed with the device");
            self.stats.active.fetch_sub(open as u64, Ordering::Relaxed);
        }
    }
}
