//! virtio-blk on a [`BlockBackend`] (raw, qcow2, ... from the storage crate).
//!
//! Offers: SEG_MAX, BLK_SIZE, FLUSH, and DISCARD + WRITE_ZEROES on writable disks, RO on
//! read-only ones; GET_ID answers the configured serial. One request queue, served by the
//! device's worker thread, which keeps every read and write of a batch in flight at once
//! (`batch.rs`).

mod batch;
mod request;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use storage::io::disk::AsyncDisk;
use storage::io::engine::{best_engine, Engine};
use storage::BlockBackend;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub use batch::MAX_INFLIGHT_BYTES;
pub use request::{
    collect, complete, parse, process, status_address, Completion, Request, RequestError, ID_BYTES,
    MAX_DESCRIPTORS, MAX_REQUEST_BYTES, SECTOR_SIZE,
};

use super::{
    device_type, read_config_bytes, ActivateError, InterruptKind, QueueHandler, VirtioDevice,
    VirtioInterrupt, WorkerThread, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1,
};
use crate::legacy::GuestLog;
use batch::{Batch, Transfer};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Most data segments per request the driver may use (queue size minus header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most sectors of one discard or write-zeroes segment.
const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;

/// Lock-free counters of one block device (the `read_*`/`write_*` ones count successful
/// reads and writes only, as Cloud Hypervisor's `vm.counters` reports them).
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Requests completed with VIRTIO_BLK_S_OK.
    pub ok: AtomicU64,
    /// Requests that failed (I/O error status or no usable status byte).
    pub failed: AtomicU64,
    /// Requests of an unsupported type.
    pub unsupported: AtomicU64,
    /// Bytes read from the disk into the guest.
    pub read_bytes: AtomicU64,
    /// Bytes the guest wrote to the disk.
    pub write_bytes: AtomicU64,
    /// Completed read requests.
    pub read_ops: AtomicU64,
    /// Completed write requests.
    pub write_ops: AtomicU64,
}

/// A virtio-blk device.
pub struct Block {
    disk: Arc<Mutex<AsyncDisk>>,
    capacity: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    stats: Arc<BlockStats>,
    worker: Option<WorkerThread>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Block {
    /// A device serving `disk` with the best I/O engine of the host (io_uring when it has
    /// it); GET_ID answers `serial` (cut to 20 bytes). A read-only backend makes a read-only
    /// device.
    pub fn new(disk: Box<dyn BlockBackend>, serial: &str) -> Self {
        Self::with_engine(disk, best_engine(u32::from(QUEUE_SIZE)), serial)
    }

    /// A device serving `disk` through `engine`.
    pub fn with_engine(disk: Box<dyn BlockBackend>, engine: Box<dyn Engine>, serial: &str) -> Self {
        let mut id = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Block {
            capacity: disk.size(),
            read_only: disk.read_only(),
            disk: Arc::new(Mutex::new(AsyncDisk::new(disk, engine))),
            id,
            stats: Arc::new(BlockStats::default()),
            worker: None,
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    fn config_space(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        c[0..8].copy_from_slice(&(self.capacity / SECTOR_SIZE).to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c[34..36].copy_from_slice(&1u16.to_le_bytes());
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&1u32.to_le_bytes());
        c[44..48].copy_from_slice(&1u32.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&1u32.to_le_bytes());
        c[56] = 1;
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let mut f = F_VERSION_1
            | F_RING_INDIRECT_DESC
            | F_RING_EVENT_IDX
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH);
        if self.read_only {
            f |= bit(VIRTIO_BLK_F_RO);
        } else {
            f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        mut queues: Vec<Queue>,
        events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        let want = QUEUE_SIZES.len();
        let queue = match queues.pop() {
            Some(q) if queues.is_empty() && q.ready() && events.len() == want => q,
            _ => {
                return Err(ActivateError::QueueCount {
                    device: self.name(),
                    got: queues.len() + 1,
                    want,
                })
            }
        };
        let handler = BlockWorker {
            mem,
            queue,
            interrupt,
            disk: self.disk.clone(),
            batch: Batch::new(),
            id: self.id,
            stats: self.stats.clone(),
            log: GuestLog::default(),
        };
        let worker = WorkerThread::spawn("virtio-blk", events, handler).map_err(|source| {
            ActivateError::Worker {
                device: "virtio-blk",
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

/// The worker's side: the queue and the disk.
struct BlockWorker {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    disk: Arc<Mutex<AsyncDisk>>,
    batch: Batch,
    id: [u8; ID_BYTES],
    stats: Arc<BlockStats>,
    log: GuestLog,
}

impl BlockWorker {
    /// Serves until the ring is empty with notifications re-enabled (with EVENT_IDX that
    /// publishes avail_event, without it clears NO_NOTIFY), so no notification is lost. Each
    /// completed batch is signalled before the next one starts, so the guest can queue more
    /// while the device works.
    fn serve(&mut self) {
        loop {
            let _ = self.queue.disable_notification(&self.mem);
            let progress = self.serve_available();
            if progress {
                self.notify_guest();
            }
            match self.queue.enable_notification(&self.mem) {
                // More became available meanwhile. Without progress the avail index is bogus
                // (pop refused it): stop rather than spin; the next notification retries.
                Ok(true) if progress => continue,
                Ok(true) => {
                    self.log.warn(format_args!(
                        "virtio-blk: avail index {} is not servable (next {})",
                        self.queue
                            .avail_idx(&self.mem, std::sync::atomic::Ordering::Acquire)
                            .map_or(0, |w| w.0),
                        self.queue.next_avail()
                    ));
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    self.log.warn(format_args!(
                        "virtio-blk: cannot enable notifications: {e:?}"
                    ));
                    break;
                }
            }
        }
    }

    /// Interrupts the guest for the used buffers, unless it asked not to be (EVENT_IDX).
    fn notify_guest(&mut self) {
        if matches!(self.queue.needs_notification(&self.mem), Ok(false)) {
            return;
        }
        if let Err(e) = self.interrupt.trigger(InterruptKind::Queue(0)) {
            self.log
                .warn(format_args!("virtio-blk: interrupt failed: {e}"));
        }
    }

    /// Starts every available request, then completes the batch.
    fn serve_available(&mut self) -> bool {
        let mut used = false;
        let mut done = Vec::new();
        let mut disk = lock(&self.disk);
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            self.batch
                .start(&self.mem, &mut disk, head, chain, &self.id, &mut done);
            used = true;
        }
        self.batch.finish(&self.mem, &mut disk, &mut done);
        drop(disk);
        for d in done {
            let c = d.completion;
            if let Some(addr) = c.status_addr {
                if self.mem.write_obj(c.status, addr).is_err() {
                    self.log.warn(format_args!(
                        "virtio-blk: cannot write status at {:#x}",
                        addr.0
                    ));
                }
            }
            self.count(&c, d.error.as_ref(), d.transfer);
            if let Err(e) = self.queue.add_used(&self.mem, d.head, c.used_len) {
                self.log.warn(format_args!(
                    "virtio-blk: cannot return descriptor {}: {e:?}",
                    d.head
                ));
            }
        }
        used
    }

    fn count(&self, done: &Completion, err: Option<&RequestError>, transfer: Option<Transfer>) {
        let s = &self.stats;
        match transfer {
            Some(Transfer::Read(n)) => {
                s.read_ops.fetch_add(1, Ordering::Relaxed);
                s.read_bytes.fetch_add(n, Ordering::Relaxed);
            }
            Some(Transfer::Write(n)) => {
                s.write_ops.fetch_add(1, Ordering::Relaxed);
                s.write_bytes.fetch_add(n, Ordering::Relaxed);
            }
            None => {}
        }
        match (done.status, err) {
            (0, _) => {
                s.ok.fetch_add(1, Ordering::Relaxed);
            }
            (2, _) => {
                s.unsupported.fetch_add(1, Ordering::Relaxed);
            }
            (_, e) => {
                s.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(e) = e {
                    self.log
                        .warn(format_args!("virtio-blk: request failed: {e}"));
                }
            }
        }
    }
}

impl QueueHandler for BlockWorker {
    fn handle_queue(&mut self, _queue: usize) {
        self.serve();
    }
}

/// Serves every available request of `queue` on `disk` (the fuzz targets' way in). Returns the
/// number of requests returned to the guest.
pub(crate) fn serve_for_fuzz(
    mem: GuestMemoryMmap,
    queue: Queue,
    disk: Box<dyn BlockBackend>,
    engine: Box<dyn Engine>,
    interrupt: Arc<dyn VirtioInterrupt>,
) -> usize {
    let stats = Arc::new(BlockStats::default());
    let mut w = BlockWorker {
        mem,
        queue,
        interrupt,
        disk: Arc::new(Mutex::new(AsyncDisk::new(disk, engine))),
        batch: Batch::new(),
        id: [0; ID_BYTES],
        stats: stats.clone(),
        log: GuestLog::default(),
    };
    w.handle_queue(0);
    let s = &stats;
    [&s.ok, &s.failed, &s.unsupported]
        .iter()
        .map(|c| c.load(Ordering::Relaxed) as usize)
        .sum()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod stats_tests;
