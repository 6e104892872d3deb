//! The I/O bus: non-overlapping address ranges mapped to devices.
//!
//! One `Bus` serves port I/O and another MMIO. Lookups take a read lock on the range map,
//! clone the device handle and release the map before locking the device, so a slow device
//! never blocks lookups of other devices nor insertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// A device that sits on a [`Bus`].
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset`.
    ///
    /// `offset` is relative to the base of the range the device was inserted at.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`.
    ///
    /// `offset` is relative to the base of the range the device was inserted at.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be inserted on the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range has length zero.
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength {
        /// Requested base.
        base: u64,
    },
    /// `base + len` does not fit in 64 bits.
    #[error("bus range at {base:#x} with length {len:#x} overflows the address space")]
    Overflow {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
    },
    /// The range overlaps a range already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps existing range {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
        /// Base of the range already there.
        other_base: u64,
        /// Length of the range already there.
        other_len: u64,
    },
}

/// A shared handle to a device on the bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    dev: SharedDevice,
}

/// Address ranges mapped to devices. Cheap to clone (clones share the same map) and usable
/// from several vCPU threads at once.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: Arc<RwLock<BTreeMap<u64, Entry>>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `dev` at `base..base + len`.
    ///
    /// Fails if `len` is zero, if the range wraps around the address space, or if it overlaps
    /// a range already on the bus.
    pub fn insert(&self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overflow { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let below = ranges.range(..=base).next_back();
        let above = ranges.range(base..).next();
        for (&other_base, other) in below.into_iter().chain(above) {
            // Both ranges are valid (checked on insertion), so other_base + len cannot wrap.
            let other_end = other_base.saturating_add(other.len);
            if other_base < end && base < other_end {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other_base,
                    other_len: other.len,
                });
            }
        }
        ranges.insert(base, Entry { len, dev });
        Ok(())
    }

    /// Unmaps the range that starts exactly at `base`, returning its device.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges.remove(&base).map(|e| e.dev)
    }

    /// Finds the device whose range holds all of `addr..addr + size`, with the offset of
    /// `addr` in that range. An empty or straddling access finds nothing.
    fn resolve(&self, addr: u64, size: usize) -> Option<(SharedDevice, u64)> {
        let size = u64::try_from(size).ok().filter(|&s| s > 0)?;
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        let offset = addr - base; // base <= addr by the range query.
        let end = offset.checked_add(size)?;
        (end <= entry.len).then(|| (Arc::clone(&entry.dev), offset))
    }

    /// Reads from the device mapped at `addr`. Returns false (and leaves `data` untouched)
    /// when no single device covers the whole access; for port I/O the caller then answers
    /// 0xff.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                lock(&dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device mapped at `addr`. Returns false when no single device covers
    /// the whole access (the write is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                lock(&dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering the guard if a previous holder panicked: a device's
/// registers stay usable (at worst inconsistent for that one device) rather than taking
/// every vCPU down with it.
fn lock(dev: &SharedDevice) -> MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| {
        tracing::warn!("bus device mutex was poisoned by a panic; recovering it");
        // Clear the flag so the warning comes once per panic, not once per access.
        dev.clear_poison();
        e.into_inner()
    })
}

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
