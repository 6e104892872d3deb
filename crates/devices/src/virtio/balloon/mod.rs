//! virtio-balloon: the guest gives memory back to the host.
//!
//! - Inflate / deflate queues: the driver sends le32 page frame numbers of 4 KiB pages. Inflated
//!   pages are released to the host ([`release`]: a hole punched in the memfd behind guest RAM),
//!   consecutive ones as one range; deflated ones only need counting (they fault back in as
//!   zeros). The VMM sets the target (`num_pages`) through a [`BalloonHandle`], which raises the
//!   configuration interrupt; the driver reports its progress in `actual`.
//! - Statistics queue (`F_STATS_VQ`): the driver keeps one buffer of (le16 tag, le64 value)
//!   entries there; the device keeps the latest figures and hands the buffer back when it wants
//!   fresh ones (every few seconds and on request), which makes the driver refill it.
//! - Free page reporting (`F_FREE_PAGE_REPORTING`): the driver sends ranges of free memory
//!   (2 MiB and more, about 2 s after they became free); each range is released and the chain
//!   returned.
//!
//! The transport has all four queues; the driver numbers the ones it uses consecutively,
//! skipping those whose feature it did not accept, so the role of each queue is computed from
//! the accepted features ([`queue_roles`]).

mod chains;
mod control;
pub mod release;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use control::{
    BalloonCounters, BalloonError, BalloonHandle, BalloonShared, BalloonStats, GuestStats,
    STAT_NAMES,
};
pub use worker::{serve_for_fuzz, BalloonQueues};

use super::{
    device_type, read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, F_VERSION_1,
};
use crate::legacy::GuestLog;

/// Feature: the statistics queue.
pub const F_STATS_VQ: u64 = 1 << 1;
/// Feature: the driver deflates when the guest runs out of memory.
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Feature: free page reporting queue.
pub const F_FREE_PAGE_REPORTING: u64 = 1 << 5;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 128;
const QUEUE_SIZES: [u16; 4] = [QUEUE_SIZE; 4];
/// How often the statistics buffer is handed back by default.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// What a queue is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Pages into the balloon.
    Inflate,
    /// Pages out of the balloon.
    Deflate,
    /// Memory statistics.
    Stats,
    /// Free page reporting.
    Reporting,
}

/// The role of each queue the driver uses, in queue order, for the features it accepted.
pub fn queue_roles(acked: u64) -> Vec<Role> {
    let mut roles = vec![Role::Inflate, Role::Deflate];
    if acked & F_STATS_VQ != 0 {
        roles.push(Role::Stats);
    }
    if acked & F_FREE_PAGE_REPORTING != 0 {
        roles.push(Role::Reporting);
    }
    roles
}

/// How the balloon is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalloonOptions {
    /// Initial target in bytes (rounded down to 4 KiB pages).
    pub size: u64,
    /// Offer `F_DEFLATE_ON_OOM`.
    pub deflate_on_oom: bool,
    /// Offer `F_FREE_PAGE_REPORTING`.
    pub free_page_reporting: bool,
    /// How often the statistics buffer is handed back to the driver.
    pub stats_interval: Duration,
}

impl Default for BalloonOptions {
    fn default() -> Self {
        BalloonOptions {
            size: 0,
            deflate_on_oom: false,
            free_page_reporting: false,
            stats_interval: STATS_INTERVAL,
        }
    }
}

/// A virtio-balloon device.
pub struct Balloon {
    shared: Arc<BalloonShared>,
    features: u64,
    acked: u64,
    stats_interval: Duration,
    worker: Option<worker::BalloonWorker>,
    log: GuestLog,
}

impl Balloon {
    /// A balloon for a guest of `memory` bytes.
    pub fn new(opts: &BalloonOptions, memory: u64) -> Result<Self, BalloonError> {
        let shared = Arc::new(BalloonShared::new(memory)?);
        BalloonHandle(shared.clone()).set_target(opts.size)?;
        let mut features = F_VERSION_1 | F_STATS_VQ;
        if opts.deflate_on_oom {
            features |= F_DEFLATE_ON_OOM;
        }
        if opts.free_page_reporting {
            features |= F_FREE_PAGE_REPORTING;
        }
        Ok(Balloon {
            shared,
            features,
            acked: 0,
            stats_interval: opts.stats_interval.max(Duration::from_millis(10)),
            worker: None,
            log: GuestLog::default(),
        })
    }

    /// The VMM's handle (target, counters, statistics).
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle(self.shared.clone())
    }

    fn config_bytes(&self) -> [u8; 16] {
        // num_pages, actual, free_page_hint_cmd_id, poison_val (le32 each).
        let mut c = [0u8; 16];
        c[..4].copy_from_slice(&self.shared.target.load(Ordering::SeqCst).to_le_bytes());
        c[4..8].copy_from_slice(&self.shared.actual.load(Ordering::SeqCst).to_le_bytes());
        c
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn name(&self) -> &'static str {
        "virtio-balloon"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features;
    }

    fn set_config_interrupt(&mut self, interrupt: Arc<dyn VirtioInterrupt>) {
        self.shared.set_irq(interrupt);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    /// Only `actual` (bytes 4..8) is the driver's to write; other bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut cfg = self.config_bytes();
        let mut touched_actual = false;
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(at @ 4..=7) => {
                    cfg[at as usize] = b;
                    touched_actual = true;
                }
                _ => self.log.warn(format_args!(
                    "virtio-balloon: driver write to read-only config offset {offset:#x} ignored"
                )),
            }
        }
        if touched_actual {
            let actual = u32::from_le_bytes([cfg[4], cfg[5], cfg[6], cfg[7]]);
            self.shared.actual.store(actual, Ordering::SeqCst);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        let roles = queue_roles(self.acked);
        let ready = queues.iter().filter(|q| q.ready()).count();
        let count_err = || ActivateError::QueueCount {
            device: "virtio-balloon",
            got: ready,
            want: roles.len(),
        };
        if queues.len() < roles.len() || events.len() != queues.len() {
            return Err(count_err());
        }
        let mut slots: [Option<(u16, Queue)>; 4] = Default::default();
        let mut used_events = Vec::new();
        for (i, (q, evt)) in queues.into_iter().zip(events).enumerate() {
            match roles.get(i) {
                Some(role) if q.ready() => {
                    slots[*role as usize] = Some((i as u16, q));
                    used_events.push((i as u16, evt));
                }
                Some(Role::Inflate | Role::Deflate) => return Err(count_err()),
                Some(role) => self.log.warn(format_args!(
                    "virtio-balloon: the {role:?} queue {i} was not enabled; not served"
                )),
                None if q.ready() => self.log.warn(format_args!(
                    "virtio-balloon: queue {i} enabled without its feature; not served"
                )),
                None => {}
            }
        }
        let [inflate, deflate, stats, reporting] = slots;
        let (Some(inflate), Some(deflate)) = (inflate, deflate) else {
            return Err(count_err());
        };
        let queues = BalloonQueues::new(
            mem,
            interrupt,
            self.shared.clone(),
            [Some(inflate), Some(deflate), stats, reporting],
        );
        let w = worker::BalloonWorker::spawn(queues, used_events, self.stats_interval).map_err(
            |source| ActivateError::Worker {
                device: "virtio-balloon",
                source,
            },
        )?;
        self.worker = Some(w);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        self.acked = 0;
        // A driver that resets the device has given up its balloon.
        self.shared.actual.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod reset_tests;
#[cfg(test)]
mod tests;
