//! The host side of host-initiated connections: accepting sockets on the listener, reading
//! their CONNECT line, and closing what is due (a line not finished within
//! [`LINE_TIMEOUT`](super::LINE_TIMEOUT), a REQUEST the guest has not answered within
//! [`CONNECT_TIMEOUT`](super::CONNECT_TIMEOUT)).

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::{Muxer, Slot, FIRST_LOCAL_PORT, LISTENER, MAX_CONNS, MAX_LINE};
use crate::virtio::vsock::conn::{Conn, State};

/// Parses `CONNECT <port>` (the newline removed).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let port = s.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

impl Muxer {
    /// Accepts the waiting host sockets; each has [`Muxer::line_timeout`] to send its line.
    pub(super) fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors (EMFILE): the level-triggered listener would wake
                    // the worker again at once; stop watching it until a connection closes.
                    tracing::warn!("virtio-vsock: accept failed: {e}; pausing the listener");
                    self.listener_paused = true;
                    let _ =
                        self.poller
                            .modify(self.listener.as_raw_fd(), EventSet::empty(), LISTENER);
                    return;
                }
            };
            if self.live() >= self.max_conns {
                tracing::warn!("virtio-vsock: connection limit: a host connection is closed");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if let Ok(i) = self.insert(Slot::Pending(stream, Vec::new())) {
                let now = Instant::now();
                self.deadlines.set(i, now + self.line_timeout, now);
                self.read_line(i);
            }
        }
    }

    /// Reads the CONNECT line byte by byte (what follows it is the guest's data).
    pub(super) fn read_line(&mut self, i: usize) {
        let Some(Some(Slot::Pending(stream, line))) = self.slots.get_mut(i) else {
            return;
        };
        let mut b = [0u8; 1];
        let done = loop {
            match stream.read(&mut b) {
                Ok(1) if b[0] == b'\n' => break parse_connect(line).ok_or(()),
                Ok(1) if line.len() < MAX_LINE => line.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EOF, an error or a line too long.
                _ => break Err(()),
            }
        };
        let Ok(port) = done else {
            tracing::debug!("virtio-vsock: a host connection sent no valid CONNECT line");
            return self.remove(i, false);
        };
        let Some(local) = self.free_local_port(port) else {
            return self.remove(i, false);
        };
        let Some(Slot::Pending(stream, _)) = self.slots[i].take() else {
            return;
        };
        self.slots[i] = Some(Slot::Conn(Conn::to_guest(stream, self.cid, local, port)));
        self.keys.insert((local, port), i);
        let now = Instant::now();
        self.deadlines.set(i, now + self.connect_timeout, now);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.schedule(i);
    }

    /// The earliest deadline of a slot.
    #[cfg(test)]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.next()
    }

    /// Closes what is due at `now` (the time is a parameter so that tests need not wait): host
    /// sockets without a CONNECT line, and host connections the guest has not answered (the
    /// guest gets a RST if it got the REQUEST). Re-arms the timer for the next deadline.
    pub fn expire(&mut self, now: Instant) {
        while let Some(i) = self.deadlines.pop_due(now) {
            match self.slots.get(i) {
                Some(Some(Slot::Pending(..))) => {
                    tracing::debug!("virtio-vsock: a host connection sent no CONNECT line in time");
                    self.stats.line_timeouts.fetch_add(1, Ordering::Relaxed);
                    self.remove(i, false);
                }
                Some(Some(Slot::Conn(c))) if c.state == State::Connecting => {
                    self.log.warn(format_args!(
                        "virtio-vsock: the guest did not answer a connection to port {} in \
                         time: closed",
                        c.peer_port
                    ));
                    self.stats.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                    let reset = c.request_sent();
                    self.remove(i, reset);
                }
                _ => {}
            }
        }
        self.deadlines.rearm(now);
    }

    fn free_local_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNS {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.keys.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }
}
