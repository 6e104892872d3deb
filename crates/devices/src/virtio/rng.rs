//! virtio-rng: fills the guest's buffers with bytes from the host's `getrandom(2)`.
//!
//! Each request gets at most [`MAX_REQUEST`] bytes (the rest of its buffers is left unused); a
//! chain with a readable buffer, a broken link or a buffer outside guest memory is returned with
//! nothing written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_type, ActivateError, InterruptKind, QueueHandler, VirtioDevice, VirtioInterrupt,
    WorkerThread, F_RING_EVENT_IDX, F_VERSION_1,
};
use crate::legacy::GuestLog;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 64;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Most bytes given for one request.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Counters of the rng device.
#[derive(Debug, Default)]
pub struct RngStats {
    /// Random bytes given to the guest.
    pub bytes: AtomicU64,
    /// Requests refused (bad chain).
    pub refused: AtomicU64,
}

/// A virtio-rng device.
#[derive(Default)]
pub struct Rng {
    stats: Arc<RngStats>,
    worker: Option<WorkerThread>,
}

impl Rng {
    /// A new device.
    pub fn new() -> Self {
        Self::default()
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<RngStats> {
        self.stats.clone()
    }
}

/// Fills `buf` from getrandom(2).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Serves one chain: returns the number of bytes written.
pub fn serve_chain<I: Iterator<Item = Descriptor>>(mem: &GuestMemoryMmap, chain: I) -> Option<u32> {
    let mut descs = Vec::new();
    for d in chain {
        let ok = d.is_write_only()
            && GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize)
            && descs.len() < 256;
        if !ok {
            return None;
        }
        descs.push(d);
    }
    if descs.last().is_none_or(|d| d.has_next()) {
        return None;
    }
    let mut left = MAX_REQUEST;
    let mut buf = vec![0u8; 4096];
    let mut written = 0u32;
    for d in descs {
        let mut off = 0u64;
        while off < u64::from(d.len()) && left > 0 {
            let n = (u64::from(d.len()) - off)
                .min(buf.len() as u64)
                .min(left as u64) as usize;
            fill_random(&mut buf[..n]).ok()?;
            mem.write_slice(&buf[..n], d.addr().checked_add(off)?)
                .ok()?;
            off += n as u64;
            left -= n;
            written += n as u32;
        }
    }
    Some(written)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn name(&self) -> &'static str {
        "virtio-rng"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_RING_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        mut queues: Vec<Queue>,
        events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        let queue = match queues.pop() {
            Some(q) if queues.is_empty() && q.ready() && events.len() == 1 => q,
            _ => {
                return Err(ActivateError::QueueCount {
                    device: self.name(),
                    got: queues.len() + 1,
                    want: 1,
                })
            }
        };
        let handler = RngWorker {
            mem,
            queue,
            interrupt,
            stats: self.stats.clone(),
            log: GuestLog::default(),
        };
        let worker = WorkerThread::spawn("virtio-rng", events, handler).map_err(|source| {
            ActivateError::Worker {
                device: "virtio-rng",
                source,
            }
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}

struct RngWorker {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    stats: Arc<RngStats>,
    log: GuestLog,
}

impl QueueHandler for RngWorker {
    fn handle_queue(&mut self, _queue: usize) {
        let mut used = false;
        loop {
            let _ = self.queue.disable_notification(&self.mem);
            let mut progress = false;
            while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
                progress = true;
                let head = chain.head_index();
                let n = serve_chain(&self.mem, chain).unwrap_or_else(|| {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    self.log.warn(format_args!(
                        "virtio-rng: bad descriptor chain {head} refused"
                    ));
                    0
                });
                self.stats.bytes.fetch_add(u64::from(n), Ordering::Relaxed);
                if let Err(e) = self.queue.add_used(&self.mem, head, n) {
                    self.log.warn(format_args!(
                        "virtio-rng: cannot return descriptor {head}: {e:?}"
                    ));
                }
                used = true;
            }
            // Stop when nothing more is available, or when a bogus avail index makes the ring
            // unservable (no progress): the next notification retries.
            let more = matches!(self.queue.enable_notification(&self.mem), Ok(true));
            if !progress || !more {
                break;
            }
        }
        if used && !matches!(self.queue.needs_notification(&self.mem), Ok(false)) {
            let _ = self.interrupt.trigger(InterruptKind::Queue(0));
        }
    }
}

#[cfg(test)]
#[path = "rng_tests.rs"]
mod tests;
