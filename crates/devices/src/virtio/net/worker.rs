//! The net worker thread: serves the tx queue when the guest notifies it and moves frames from
//! the backend into rx buffers when the backend is readable and buffers exist (see [`super::rx`]).
//! A tx chain is written from guest memory with one writev.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::frame::RxChain;
use super::{tx_slices, NetBackend, NetStats, HDR_LEN};
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
    /// Whether the driver accepted mergeable rx buffers (a frame may span several chains).
    pub mergeable: bool,
    /// Rx chains taken from the ring, waiting for frames, in ring order.
    pub held: VecDeque<RxChain>,
    /// Frames for rx chains smaller than the largest frame land here first
    /// ([`MAX_FRAME`](super::MAX_FRAME) + 1 bytes: a frame that fills it is too long).
    pub bounce: Vec<u8>,
    /// Length of a frame in `bounce` waiting for more rx chains (mergeable buffers only).
    pub pending: Option<usize>,
    pub log: GuestLog,
}

pub(super) fn lock(b: &Mutex<Box<dyn NetBackend>>) -> MutexGuard<'_, Box<dyn NetBackend>> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn payload(len: usize) -> u64 {
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
