//! What the VMM and the device share: the target, the driver's `actual`, the counters, the
//! guest's latest memory statistics, and the handle through which the VMM sets the target and
//! asks for fresh statistics at run time.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::release::PAGE_SIZE;
use crate::virtio::{InterruptKind, VirtioInterrupt};

/// Names of the statistics tags the driver reports (virtio spec, "Memory Statistics Tags"), by
/// tag number.
pub const STAT_NAMES: [&str; 10] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
];

/// Why the VMM's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The balloon cannot be larger than guest memory.
    #[error("balloon size {size} bytes is larger than guest memory ({memory} bytes)")]
    TooLarge {
        /// Asked size.
        size: u64,
        /// Guest memory.
        memory: u64,
    },
    /// The eventfd used to ask the worker for statistics could not be made.
    #[error("cannot create the balloon's statistics eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// Lock-free counters of the balloon.
#[derive(Debug, Default)]
pub struct BalloonStats {
    /// 4 KiB pages the driver put in the balloon (inflate), released to the host.
    pub inflated_pages: AtomicU64,
    /// 4 KiB pages the driver took back (deflate).
    pub deflated_pages: AtomicU64,
    /// Bytes of free guest memory the driver reported and the host released.
    pub reported_bytes: AtomicU64,
    /// Page numbers outside guest memory (skipped).
    pub bad_pfns: AtomicU64,
    /// Reported free ranges outside guest memory or empty (skipped).
    pub bad_ranges: AtomicU64,
    /// Chains refused whole (wrong direction, too long, broken).
    pub refused_chains: AtomicU64,
    /// fallocate / madvise failures.
    pub release_errors: AtomicU64,
    /// Statistics buffers received from the driver.
    pub stats_updates: AtomicU64,
}

/// The guest's latest memory statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// Value of each tag of [`STAT_NAMES`], if the driver reported it.
    pub values: [Option<u64>; STAT_NAMES.len()],
    /// When the driver last reported them.
    pub updated: Option<Instant>,
}

/// State shared by the device, its worker and the VMM's handle.
pub struct BalloonShared {
    pub(super) target: AtomicU32,
    pub(super) actual: AtomicU32,
    pub(super) stats: BalloonStats,
    pub(super) guest: Mutex<GuestStats>,
    pub(super) irq: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    pub(super) stats_request: EventFd,
    memory: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BalloonShared {
    pub(super) fn new(memory: u64) -> Result<Self, BalloonError> {
        Ok(BalloonShared {
            target: AtomicU32::new(0),
            actual: AtomicU32::new(0),
            stats: BalloonStats::default(),
            guest: Mutex::default(),
            irq: Mutex::new(None),
            stats_request: EventFd::new(EFD_NONBLOCK).map_err(BalloonError::EventFd)?,
            memory,
        })
    }

    pub(super) fn set_irq(&self, irq: Arc<dyn VirtioInterrupt>) {
        *lock(&self.irq) = Some(irq);
    }

    pub(super) fn guest(&self) -> MutexGuard<'_, GuestStats> {
        lock(&self.guest)
    }

    fn set_target(&self, bytes: u64) -> Result<(), BalloonError> {
        if bytes > self.memory {
            return Err(BalloonError::TooLarge {
                size: bytes,
                memory: self.memory,
            });
        }
        // Guest memory is far below 2^32 pages of 4 KiB (16 TiB).
        let pages = u32::try_from(bytes / PAGE_SIZE).unwrap_or(u32::MAX);
        let old = self.target.swap(pages, Ordering::SeqCst);
        if old != pages {
            if let Some(irq) = lock(&self.irq).as_ref() {
                if let Err(e) = irq.trigger(InterruptKind::Config) {
                    tracing::warn!("virtio-balloon: cannot raise the config interrupt: {e}");
                }
            }
        }
        Ok(())
    }
}

/// A snapshot of the balloon's figures (sizes in bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    /// The size the VMM asked for.
    pub target_bytes: u64,
    /// The size the driver says it reached (`actual`).
    pub actual_bytes: u64,
    /// See [`BalloonStats`].
    pub inflated_pages: u64,
    /// See [`BalloonStats`].
    pub deflated_pages: u64,
    /// See [`BalloonStats`].
    pub reported_bytes: u64,
    /// See [`BalloonStats`].
    pub bad_pfns: u64,
    /// See [`BalloonStats`].
    pub bad_ranges: u64,
    /// See [`BalloonStats`].
    pub refused_chains: u64,
    /// See [`BalloonStats`].
    pub release_errors: u64,
    /// See [`BalloonStats`].
    pub stats_updates: u64,
    /// The guest's statistics.
    pub guest: GuestStats,
}

impl BalloonCounters {
    /// Every figure as (name, value): the counters, then `guest_<tag>` for each statistic the
    /// driver reported.
    pub fn named(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = [
            ("target_bytes", self.target_bytes),
            ("actual_bytes", self.actual_bytes),
            ("inflated_pages", self.inflated_pages),
            ("deflated_pages", self.deflated_pages),
            ("reported_bytes", self.reported_bytes),
            ("bad_pfns", self.bad_pfns),
            ("bad_ranges", self.bad_ranges),
            ("refused_chains", self.refused_chains),
            ("release_errors", self.release_errors),
            ("stats_updates", self.stats_updates),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (name, value) in STAT_NAMES.iter().zip(self.guest.values) {
            if let Some(value) = value {
                v.push((format!("guest_{name}"), value));
            }
        }
        v
    }
}

/// The VMM's handle on a balloon: set the target, read the figures, ask for fresh statistics.
#[derive(Clone)]
pub struct BalloonHandle(pub(super) Arc<BalloonShared>);

impl std::fmt::Debug for BalloonHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BalloonHandle")
            .field(&self.counters())
            .finish()
    }
}

impl BalloonHandle {
    /// Asks the guest for a balloon of `bytes` (rounded down to 4 KiB pages); raises the
    /// configuration interrupt when the target changes.
    pub fn set_target(&self, bytes: u64) -> Result<(), BalloonError> {
        self.0.set_target(bytes)
    }

    /// Asks the worker to hand the statistics buffer back to the driver now, so that the
    /// driver sends fresh figures (they arrive asynchronously).
    pub fn request_stats(&self) {
        let _ = self.0.stats_request.write(1);
    }

    /// The current figures.
    pub fn counters(&self) -> BalloonCounters {
        let s = &self.0;
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BalloonCounters {
            target_bytes: u64::from(s.target.load(Ordering::SeqCst)) * PAGE_SIZE,
            actual_bytes: u64::from(s.actual.load(Ordering::SeqCst)) * PAGE_SIZE,
            inflated_pages: r(&s.stats.inflated_pages),
            deflated_pages: r(&s.stats.deflated_pages),
            reported_bytes: r(&s.stats.reported_bytes),
            bad_pfns: r(&s.stats.bad_pfns),
            bad_ranges: r(&s.stats.bad_ranges),
            refused_chains: r(&s.stats.refused_chains),
            release_errors: r(&s.stats.release_errors),
            stats_updates: r(&s.stats.stats_updates),
            guest: s.guest().clone(),
        }
    }
}
