//! The net worker thread: serves the tx queue when the guest notifies it and moves frames from
//! the backend into rx buffers when the backend is readable and buffers exist.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{rx_scatter, tx_gather, NetBackend, NetStats, HDR_LEN};
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
    /// Length of a frame read from the backend, in `buf`, waiting for rx buffers.
    pub pending: Option<usize>,
    pub buf: Vec<u8>,
    pub log: GuestLog,
}

fn lock(b: &Mutex<Box<dyn NetBackend>>) -> MutexGuard<'_, Box<dyn NetBackend>> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

fn payload(len: usize) -> u64 {
    len.saturating_sub(HDR_LEN) as u64
}

impl NetQueues {
    fn backend(&self) -> MutexGuard<'_, Box<dyn NetBackend>> {
        lock(&self.backend)
    }

    /// Sends every available tx chain to the backend.
    pub fn process_tx(&mut self) {
        let mut used = false;
        let mut frame = Vec::new();
        loop {
            let _ = self.tx.disable_notification(&self.mem);
            let mut progress = false;
            while let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) {
                progress = true;
                let head = chain.head_index();
                let sent = match tx_gather(&self.mem, chain, &mut frame) {
                    Ok(()) => self
                        .backend()
                        .write_frame(&frame)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match sent {
                    Ok(()) => {
                        self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                        let n = payload(frame.len());
                        self.stats.tx_bytes.fetch_add(n, Ordering::Relaxed);
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

    /// Moves frames from the backend into rx buffers until either runs out. Returns whether the
    /// backend may still have frames (a frame waits for buffers).
    pub fn process_rx(&mut self) -> bool {
        let mut used = false;
        loop {
            let len = match self.pending.take() {
                Some(l) => l,
                None => {
                    let r = { lock(&self.backend).read_frame(&mut self.buf) };
                    match r {
                        Ok(n) => n.min(self.buf.len()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            if e.kind() != io::ErrorKind::WouldBlock {
                                self.log
                                    .warn(format_args!("virtio-net: rx read failed: {e}"));
                            }
                            break;
                        }
                    }
                }
            };
            let mut chain = self.rx.pop_descriptor_chain(&self.mem);
            // Out of buffers: re-arm the notification, and look once more for buffers the
            // driver added meanwhile (once only: a bogus avail index must not spin).
            if chain.is_none() && matches!(self.rx.enable_notification(&self.mem), Ok(true)) {
                chain = self.rx.pop_descriptor_chain(&self.mem);
            }
            let Some(chain) = chain else {
                self.pending = Some(len);
                break;
            };
            let head = chain.head_index();
            let frame = self.buf.get_mut(..len).unwrap_or_default();
            let n = match rx_scatter(&self.mem, chain, frame) {
                Ok(n) => {
                    self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .rx_bytes
                        .fetch_add(payload(len), Ordering::Relaxed);
                    n
                }
                Err(e) => {
                    self.stats.rx_drops.fetch_add(1, Ordering::Relaxed);
                    self.log.warn(format_args!(
                        "virtio-net: rx frame dropped (chain {head}): {e}"
                    ));
                    0
                }
            };
            if let Err(e) = self.rx.add_used(&self.mem, head, n) {
                self.log
                    .warn(format_args!("virtio-net: cannot return rx {head}: {e:?}"));
            }
            used = true;
        }
        if used && !matches!(self.rx.needs_notification(&self.mem), Ok(false)) {
            let _ = self.interrupt.trigger(InterruptKind::Queue(0));
        }
        self.pending.is_some()
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
