//! Legacy PC devices on the port-I/O bus (see docs/architecture.md for ports and IRQs).
//!
//! Every device answers bad accesses (unexpected size or offset) without panicking:
//! writes are ignored, reads fill the buffer with 0xff. The first bad access of a device
//! is logged with `warn!`, all are counted in its [`DeviceMetrics`].

mod acpi_pm;
mod cmos;
mod i8042;
mod pvpanic;
mod serial;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use acpi_pm::{AcpiPm, AcpiPmState, PM_BASE, PM_LEN};
pub use cmos::{Cmos, CmosClock, CmosState, CMOS_BASE, CMOS_LEN};
pub use i8042::{I8042State, I8042StateError, I8042, I8042_BASE, I8042_LEN};
pub use pvpanic::{PvPanic, PVPANIC_BASE, PVPANIC_LEN};
pub use serial::{Serial, SerialError, SerialMetrics, SerialState, SERIAL_BASE, SERIAL_LEN};

/// Lock-free counters common to the legacy devices.
#[derive(Debug, Default)]
pub struct DeviceMetrics {
    /// Guest accesses with an unexpected size or offset (ignored / answered 0xff).
    pub bad_accesses: AtomicU64,
    /// Interrupts that could not be raised or lowered.
    pub irq_errors: AtomicU64,
    /// Set once the first bad access has been logged.
    warned: AtomicBool,
    /// Set once the first interrupt error has been logged.
    irq_warned: AtomicBool,
}

impl DeviceMetrics {
    /// Counts a bad access and logs the first one of this device.
    pub(crate) fn bad_access(&self, device: &str, what: fmt::Arguments<'_>) {
        self.bad_accesses.fetch_add(1, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("{device}: {what} (further bad accesses are only counted)");
        }
    }

    /// Counts an interrupt delivery failure and logs the first one of this device.
    pub(crate) fn irq_error(&self, device: &str, err: &std::io::Error) {
        self.irq_errors.fetch_add(1, Ordering::Relaxed);
        if !self.irq_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{device}: interrupt delivery failed: {err} (further failures are only counted)"
            );
        }
    }

    /// Number of bad accesses so far.
    pub fn bad_access_count(&self) -> u64 {
        self.bad_accesses.load(Ordering::Relaxed)
    }
}

/// Fills a read buffer with the "nothing here" answer.
pub(crate) fn fill_invalid(data: &mut [u8]) {
    data.fill(0xff);
}

/// A log site the guest can trigger: its first message is logged at the given level,
/// later ones only at `debug`, so a guest cannot flood the VMM's log.
#[derive(Debug, Default)]
pub(crate) struct GuestLog(AtomicBool);

impl GuestLog {
    /// Logs at `info` the first time, `debug` afterwards.
    pub(crate) fn info(&self, what: fmt::Arguments<'_>) {
        if self.0.swap(true, Ordering::Relaxed) {
            tracing::debug!("{what}");
        } else {
            tracing::info!("{what}");
        }
    }

    /// Logs at `warn` the first time, `debug` afterwards.
    pub(crate) fn warn(&self, what: fmt::Arguments<'_>) {
        if self.0.swap(true, Ordering::Relaxed) {
            tracing::debug!("{what}");
        } else {
            tracing::warn!("{what}");
        }
    }
}
