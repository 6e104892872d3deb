//! The rx queue: frames from the backend into the guest's rx chains.
//!
//! Chains are taken from the ring before the backend is read and held until a frame fills
//! them. When the held chains have room for the largest frame (one "big packets" chain of a
//! driver with TSO, or enough mergeable buffers), the frame is read with one readv straight
//! into guest memory. Otherwise it lands in a bounce buffer one byte larger than the largest
//! frame first, because a TAP cuts a frame that does not fit without an error; a frame too
//! large for what the driver has posted then waits for more buffers (mergeable buffers), or is
//! dropped (one chain per frame). With mergeable buffers a frame spans as many chains as it
//! needs and the first one's header says how many (`num_buffers`).

use std::io;
use std::sync::atomic::Ordering;

use virtio_queue::QueueT;
use vm_memory::VolatileSlice;

use super::frame::rx_chain;
use super::worker::{lock, payload, NetQueues};
use super::{HDR_LEN, MAX_FRAME};
use crate::virtio::InterruptKind;

/// Most iovecs one readv takes.
const MAX_IOVECS: usize = 1024;

/// Where a frame read from the backend is.
enum Landed {
    /// In the held chains' guest memory already.
    Direct(usize),
    /// In the bounce buffer.
    Bounce(usize),
}

impl NetQueues {
    /// Moves frames from the backend into rx chains until either runs out. Returns whether
    /// the guest ran out of buffers (frames may then wait until it adds some and notifies the
    /// queue).
    pub fn process_rx(&mut self) -> bool {
        let mut used = false;
        let starved = loop {
            let want = self.pending.unwrap_or(MAX_FRAME + 1);
            let dry = self.take_chains(want, &mut used);
            if self.held.is_empty() {
                break true;
            }
            let landed = match self.pending.take() {
                Some(n) => Landed::Bounce(n),
                None => match self.read_frame() {
                    Ok(l) => l,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            self.log
                                .warn(format_args!("virtio-net: rx read failed: {e}"));
                        }
                        break false;
                    }
                },
            };
            let room = self.room();
            let len = match landed {
                Landed::Direct(n) | Landed::Bounce(n) if !(HDR_LEN..=MAX_FRAME).contains(&n) => {
                    self.drop_frame(n, &mut used);
                    continue;
                }
                Landed::Bounce(n) if n > room => {
                    // More buffers may come (mergeable), unless the ring holds no more.
                    let full = self.held.len() >= usize::from(self.rx.size());
                    if self.mergeable && dry && !full {
                        self.pending = Some(n);
                        break true;
                    }
                    self.drop_frame(n, &mut used);
                    continue;
                }
                Landed::Bounce(n) => {
                    if let Err(e) = self.fill_from_bounce(n) {
                        self.log
                            .warn(format_args!("virtio-net: rx frame lost: {e}"));
                        self.drop_frame(n, &mut used);
                        continue;
                    }
                    n
                }
                Landed::Direct(n) => n,
            };
            self.complete(len);
            used = true;
        };
        if used && !matches!(self.rx.needs_notification(&self.mem), Ok(false)) {
            let _ = self.interrupt.trigger(InterruptKind::Queue(0));
        }
        starved
    }

    /// Room for the next frame: every held chain with mergeable buffers, else the first.
    fn room(&self) -> usize {
        if self.mergeable {
            self.held
                .iter()
                .fold(0usize, |a, c| a.saturating_add(c.room))
        } else {
            self.held.front().map_or(0, |c| c.room)
        }
    }

    /// Takes chains from the ring until the room reaches `want` (one chain without mergeable
    /// buffers); bad chains are returned unused and counted. Returns whether the ring ran dry.
    fn take_chains(&mut self, want: usize, used: &mut bool) -> bool {
        loop {
            let enough = if self.mergeable {
                self.room() >= want
            } else {
                !self.held.is_empty()
            };
            if enough {
                return false;
            }
            let mut chain = self.rx.pop_descriptor_chain(&self.mem);
            // Out of buffers: re-arm the notification, and look once more for buffers the
            // driver added meanwhile (once only: a bogus avail index must not spin).
            if chain.is_none() && matches!(self.rx.enable_notification(&self.mem), Ok(true)) {
                chain = self.rx.pop_descriptor_chain(&self.mem);
            }
            let Some(chain) = chain else {
                return true;
            };
            let head = chain.head_index();
            match rx_chain(&self.mem, head, chain) {
                Ok(c) => self.held.push_back(c),
                Err(e) => {
                    self.stats.rx_drops.fetch_add(1, Ordering::Relaxed);
                    self.log
                        .warn(format_args!("virtio-net: rx chain {head} refused: {e}"));
                    self.return_rx(head, 0);
                    *used = true;
                }
            }
        }
    }

    /// Reads one frame: into the held chains when they hold the largest frame, else into the
    /// bounce buffer.
    fn read_frame(&mut self) -> io::Result<Landed> {
        let chains = if self.mergeable { self.held.len() } else { 1 };
        let mut slices: Vec<VolatileSlice<'_>> = Vec::new();
        let mut left = MAX_FRAME + 1;
        for c in self.held.iter().take(chains) {
            match c.slices_into(&self.mem, left, &mut slices) {
                Ok(n) => left -= n,
                Err(_) => break,
            }
            if left == 0 {
                break;
            }
        }
        let mut backend = lock(&self.backend);
        if left == 0 && slices.len() <= MAX_IOVECS {
            return backend.read_frame(&slices).map(Landed::Direct);
        }
        drop(slices);
        let bounce = VolatileSlice::from(&mut self.bounce[..]);
        backend.read_frame(&[bounce]).map(Landed::Bounce)
    }

    /// Copies the `n` bytes in the bounce buffer into the held chains (they have the room).
    fn fill_from_bounce(&mut self, n: usize) -> Result<(), super::FrameError> {
        let mut rest = self.bounce.get(..n).unwrap_or_default();
        for c in &self.held {
            if rest.is_empty() {
                break;
            }
            let (part, tail) = rest.split_at(c.room.min(rest.len()));
            c.write(&self.mem, part)?;
            rest = tail;
        }
        Ok(())
    }

    /// Hands the frame of `len` bytes, now in the held chains, to the guest.
    fn complete(&mut self, len: usize) {
        let mut count = 0u16;
        let mut left = len;
        for c in &self.held {
            count += 1;
            left -= c.room.min(left);
            if left == 0 {
                break;
            }
        }
        let header = self
            .held
            .front()
            .map(|c| c.set_num_buffers(&self.mem, count));
        if let Some(Err(e)) = header {
            self.log
                .warn(format_args!("virtio-net: rx header not written: {e}"));
        }
        self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.stats
            .rx_bytes
            .fetch_add(payload(len), Ordering::Relaxed);
        let mut left = len;
        for _ in 0..count {
            let Some(c) = self.held.pop_front() else {
                break;
            };
            let n = c.room.min(left);
            left -= n;
            self.return_rx(c.head, n as u32);
        }
    }

    /// Drops a frame of `len` bytes: the first held chain goes back unused.
    fn drop_frame(&mut self, len: usize, used: &mut bool) {
        self.stats.rx_drops.fetch_add(1, Ordering::Relaxed);
        let room = self.room();
        self.log.warn(format_args!(
            "virtio-net: rx frame of {len} bytes dropped (room {room})"
        ));
        if let Some(c) = self.held.pop_front() {
            self.return_rx(c.head, 0);
            *used = true;
        }
    }

    fn return_rx(&mut self, head: u16, len: u32) {
        if let Err(e) = self.rx.add_used(&self.mem, head, len) {
            self.log
                .warn(format_args!("virtio-net: cannot return rx {head}: {e:?}"));
        }
    }
}
