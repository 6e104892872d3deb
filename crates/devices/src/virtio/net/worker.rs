//! The net worker thread: serves the tx queue when the guest notifies it and moves frames from
//! the backend into rx buffers when the backend is readable and buffers exist. A tx chain is
//! written from guest memory with one writev. An rx chain is taken before the backend is read:
//! one that holds the largest frame (a driver with TSO posts such chains) gets the frame by
//! one readv into guest memory; a smaller one gets it through a bounce buffer, since a TAP cuts
//! a frame that does not fit without saying so.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use vm_memory::VolatileSlice;

use super::{rx_buffers, set_num_buffers, tx_slices, NetBackend, NetStats, HDR_LEN, MAX_FRAME};
use crate::legacy::GuestLog;
use crate::virtio::{InterruptKind, VirtioInterrupt};

const RX: u64 = 0;
const TX: u64 = 1;
const TAP: u64 = 2;
const STOP: u64 = 3;

/// The queues and state the worker serves (driven directly by the unit tests).
pub(super) struct NetQueues {
    pub mem: GuestMemoryMmap,
    pub rx: Queue,
    pub tx: Queue,
    pub backend: Arc<Mutex<Box<dyn NetBackend>>>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub stats: Arc<NetStats>,
    /// Frames for rx chains smaller than the largest frame land here first
    /// ([`MAX_FRAME`] + 1 bytes: a frame that fills it is too long).
    pub bounce: Vec<u8>,
    pub log: GuestLog,
}

fn lock(b: &Mutex<Box<dyn NetBackend>>) -> MutexGuard<'_, Box<dyn NetBackend>> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

fn payload(len: usize) -> u64 {
    len.saturating_sub(HDR_LEN) as u64
}

impl NetQueues {
    /// Sends every available tx chain to the backend.
    pub fn process_tx(&mut self) {
        let mut used = false;
        loop {
            let _ = self.tx.disable_notification(&self.mem);
            let mut progress = false;
            while let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) {
                progress = true;
                let head = chain.head_index();
                let sent = match tx_slices(&self.mem, chain) {
                    Ok((bufs, len)) => lock(&self.backend)
                        .write_frame(&bufs)
                        .map(|()| len)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match sent {
                    Ok(len) => {
                        self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .tx_bytes
                            .fetch_add(payload(len), Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.stats.tx_drops.fetch_add(1, Ordering::Relaxed);
                        self.log
                            .warn(format_args!("virtio-net: tx chain {head} dropped: {e}"));
                    }
                }
                if let Err(e) = self.tx.add_used(&self.mem, head, 0) {
                    self.log
                        .warn(format_args!("virtio-net: cannot return tx {head}: {e:?}"));
                }
                used = true;
            }
            let more = matches!(self.tx.enable_notification(&self.mem), Ok(true));
            if !progress || !more {
                break;
            }
        }
        if used && !matches!(self.tx.needs_notification(&self.mem), Ok(false)) {
            let _ = self.interrupt.trigger(InterruptKind::Queue(1));
        }
    }

    /// Moves frames from the backend into rx buffers until either runs out. Returns whether
    /// the guest ran out of buffers (frames may then wait in the backend until it adds some and
    /// notifies the queue).
    pub fn process_rx(&mut self) -> bool {
        let mut used = false;
        let mut starved = false;
        loop {
            let mut chain = self.rx.pop_descriptor_chain(&self.mem);
            // Out of buffers: re-arm the notification, and look once more for buffers the
            // driver added meanwhile (once only: a bogus avail index must not spin).
            if chain.is_none() && matches!(self.rx.enable_notification(&self.mem), Ok(true)) {
                chain = self.rx.pop_descriptor_chain(&self.mem);
            }
            let Some(chain) = chain else {
                starved = true;
                break;
            };
            let head = chain.head_index();
            let bufs = match rx_buffers(&self.mem, chain) {
                Ok(b) => b,
                Err(e) => {
                    self.stats.rx_drops.fetch_add(1, Ordering::Relaxed);
                    self.log
                        .warn(format_args!("virtio-net: rx chain {head} refused: {e}"));
                    self.return_rx(head, 0);
                    used = true;
                    continue;
                }
            };
            let r = {
                let mut backend = lock(&self.backend);
                if bufs.room > MAX_FRAME {
                    backend.read_frame(&bufs.slices)
                } else {
                    let bounce = &mut self.bounce[..];
                    let r = backend.read_frame(&[VolatileSlice::from(&mut *bounce)]);
                    if let Ok(n) = r {
                        if let Some(frame) = bounce.get(..n).filter(|_| n <= bufs.room) {
                            bufs.fill(frame);
                        }
                    }
                    r
                }
            };
            let len = match r {
                Ok(n) => n,
                Err(e) => {
                    // No frame: the chain goes back to the ring for the next one.
                    self.rx.go_to_previous_position();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.log
                            .warn(format_args!("virtio-net: rx read failed: {e}"));
                    }
                    break;
                }
            };
            let n = if len > bufs.room.min(MAX_FRAME) || len < HDR_LEN {
                self.stats.rx_drops.fetch_add(1, Ordering::Relaxed);
                self.log.warn(format_args!(
                    "virtio-net: rx frame of {len} bytes dropped (chain {head} holds {})",
                    bufs.room
                ));
                0
            } else if let Err(e) = set_num_buffers(&self.mem, &bufs) {
                self.stats.rx_drops.fetch_add(1, Ordering::Relaxed);
                self.log
                    .warn(format_args!("virtio-net: rx chain {head}: {e}"));
                0
            } else {
                self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .rx_bytes
                    .fetch_add(payload(len), Ordering::Relaxed);
                len as u32
            };
            self.return_rx(head, n);
            used = true;
        }
        if used && !matches!(self.rx.needs_notification(&self.mem), Ok(false)) {
            let _ = self.interrupt.trigger(InterruptKind::Queue(0));
        }
        starved
    }

    fn return_rx(&mut self, head: u16, len: u32) {
        if let Err(e) = self.rx.add_used(&self.mem, head, len) {
            self.log
                .warn(format_args!("virtio-net: cannot return rx {head}: {e:?}"));
        }
    }
}

/// A running net worker, stopped and joined on drop.
pub(super) struct NetWorker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl NetWorker {
    /// Starts serving `q`: `events` are the rx and tx notifications, `tap` the backend's fd.
    pub fn spawn(q: NetQueues, events: Vec<EventFd>, tap: RawFd) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let add = |fd: RawFd, set: EventSet, token: u64| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, token))
        };
        add(stop.as_raw_fd(), EventSet::IN, STOP)?;
        for (e, token) in events.iter().zip([RX, TX]) {
            add(e.as_raw_fd(), EventSet::IN, token)?;
        }
        add(tap, EventSet::IN | EventSet::EDGE_TRIGGERED, TAP)?;
        let stop_clone = stop.try_clone()?;
        let handle = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || run(epoll, stop_clone, events, q))?;
        Ok(NetWorker {
            stop,
            handle: Some(handle),
        })
    }
}

fn run(epoll: Epoll, stop: EventFd, events: Vec<EventFd>, mut q: NetQueues) {
    let mut ready = [EpollEvent::default(); 4];
    // Frames may wait in the TAP from before activation: try at once.
    q.process_rx();
    q.process_tx();
    loop {
        let n = match epoll.wait(-1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio-net: epoll failed: {e}; the device stops serving");
                return;
            }
        };
        for ev in ready.iter().take(n) {
            match ev.data() {
                STOP => {
                    let _ = stop.read();
                    return;
                }
                RX | TAP => {
                    if let Some(e) = events.first() {
                        let _ = e.read();
                    }
                    q.process_rx();
                }
                _ => {
                    if let Some(e) = events.get(1) {
                        let _ = e.read();
                    }
                    q.process_tx();
                }
            }
        }
    }
}

impl Drop for NetWorker {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            tracing::error!("cannot signal the virtio-net worker to stop: {e}");
            return;
        }
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                tracing::error!("the virtio-net worker thread panicked");
            }
        }
    }
}
