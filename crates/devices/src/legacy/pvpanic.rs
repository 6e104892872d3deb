//! The pvpanic port device (ACPI `QEMU0001`), so a guest panic is told apart from a reboot.

use std::sync::Arc;

use super::{fill_invalid, DeviceMetrics, GuestLog};
use crate::bus::BusDevice;
use crate::events::{GuestEvent, GuestEventSink};

/// Port of the pvpanic device.
pub const PVPANIC_BASE: u64 = 0x505;
/// Length of its port range.
pub const PVPANIC_LEN: u64 = 1;

/// Event bit: the guest kernel panicked.
const PANICKED: u8 = 1 << 0;
/// Event bit: a crash kernel is loaded (kdump will follow).
const CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic device: reads return the supported events, a write with bit 0 set reports
/// [`GuestEvent::Panic`]; bit 1 (crash kernel loaded) is only logged.
pub struct PvPanic {
    events: Arc<dyn GuestEventSink>,
    metrics: Arc<DeviceMetrics>,
    log_crash: GuestLog,
    log_panic: GuestLog,
}

impl PvPanic {
    /// A pvpanic device that reports to `events`.
    pub fn new(events: Arc<dyn GuestEventSink>) -> Self {
        Self {
            events,
            metrics: Arc::default(),
            log_crash: GuestLog::default(),
            log_panic: GuestLog::default(),
        }
    }

    /// Bad-access counters of this device.
    pub fn metrics(&self) -> Arc<DeviceMetrics> {
        Arc::clone(&self.metrics)
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0, [byte]) => *byte = PANICKED | CRASH_LOADED,
            (_, data) => {
                self.metrics.bad_access(
                    "pvpanic",
                    format_args!("read of {} bytes at offset {offset}", data.len()),
                );
                fill_invalid(data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            self.metrics.bad_access(
                "pvpanic",
                format_args!("write of {} bytes at offset {offset}", data.len()),
            );
            return;
        };
        if offset != 0 {
            self.metrics
                .bad_access("pvpanic", format_args!("write at offset {offset}"));
            return;
        }
        if value & CRASH_LOADED != 0 {
            self.log_crash.info(format_args!(
                "pvpanic: guest reports a crash kernel is loaded"
            ));
        }
        if value & PANICKED != 0 {
            self.log_panic
                .warn(format_args!("pvpanic: guest kernel panicked"));
            self.events.notify(GuestEvent::Panic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::EventRecorder;

    fn dev() -> (PvPanic, Arc<EventRecorder>) {
        let rec = Arc::new(EventRecorder::default());
        (PvPanic::new(rec.clone()), rec)
    }

    #[test]
    fn read_returns_capabilities() {
        let (mut p, _) = dev();
        let mut b = [0u8];
        p.read(0, &mut b);
        assert_eq!(b, [0x03]);
    }

    #[test]
    fn panic_bit_reports_panic_only() {
        let (mut p, rec) = dev();
        p.write(0, &[CRASH_LOADED]);
        p.write(0, &[0]);
        assert!(rec.events().is_empty());
        p.write(0, &[PANICKED]);
        assert_eq!(rec.events(), vec![GuestEvent::Panic]);
        p.write(0, &[PANICKED | CRASH_LOADED]);
        assert_eq!(rec.events(), vec![GuestEvent::Panic, GuestEvent::Panic]);
    }

    #[test]
    fn bad_accesses_are_ignored() {
        let (mut p, rec) = dev();
        p.write(0, &[1, 1]);
        p.write(1, &[1]);
        p.write(0, &[]);
        let mut w = [0u8; 2];
        p.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        assert!(rec.events().is_empty());
        assert_eq!(p.metrics().bad_access_count(), 4);
    }
}
