//! ACPI fixed-feature power management: the PM1a event and control blocks and the reset
//! register, as one device at 0x600..0x609.
//!
//! | offset | register | access |
//! |---|---|---|
//! | 0..2 | PM1_STS | write 1 to clear |
//! | 2..4 | PM1_EN | read/write |
//! | 4..6 | PM1_CNT | SCI_EN reads 1, SLP_EN write-only |
//! | 6..8 | (unused) | reads 0, writes ignored |
//! | 8 | RESET_REG | write 0x06 = reboot, reads 0 |
//!
//! Accesses of 1, 2 or 4 bytes at any offset inside the block are split into the bytes of
//! the registers they cover. The SCI is a level line, high while `PM1_STS & PM1_EN != 0`,
//! updated after every write.

use std::sync::Arc;

use super::{fill_invalid, DeviceMetrics, GuestLog};
use crate::bus::BusDevice;
use crate::events::{GuestEvent, GuestEventSink};
use crate::interrupt::IrqLine;

/// Base port of the block (PM1a_EVT_BLK).
pub const PM_BASE: u64 = 0x600;
/// Length of the block: event (4) + control (2) + gap (2) + reset (1).
pub const PM_LEN: u64 = 9;

/// PM1_STS / PM1_EN: power button.
const PWRBTN: u16 = 1 << 8;
/// PM1_CNT: SCI enabled (ACPI mode; always 1, there is no SMI_CMD).
const SCI_EN: u16 = 1 << 0;
/// PM1_CNT: sleep type field.
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
/// PM1_CNT: sleep enable (write-only).
const SLP_EN: u16 = 1 << 13;
/// SLP_TYP value of S5 (our DSDT's `\_S5` package).
const SLP_TYP_S5: u16 = 5;
/// Value written to the reset register to reboot.
const RESET_VALUE: u8 = 0x06;

const OFF_STS: u64 = 0;
const OFF_EN: u64 = 2;
const OFF_CNT: u64 = 4;
const OFF_RESET: u64 = 8;

/// The plain register state of [`AcpiPm`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcpiPmState {
    /// PM1 status (write-1-to-clear).
    pub pm1_sts: u16,
    /// PM1 enable.
    pub pm1_en: u16,
    /// PM1 control, without SLP_EN (write-only).
    pub pm1_cnt: u16,
}

/// A 16-bit register update assembled from the bytes of one access.
#[derive(Clone, Copy, Default)]
struct Masked {
    value: u16,
    mask: u16,
}

impl Masked {
    fn put(&mut self, byte: u64, b: u8) {
        let shift = if byte == 0 { 0 } else { 8 };
        self.value |= u16::from(b) << shift;
        self.mask |= 0xff << shift;
    }
    fn apply(self, old: u16) -> u16 {
        (old & !self.mask) | (self.value & self.mask)
    }
}

/// The ACPI PM1a registers and the reset register.
pub struct AcpiPm {
    state: AcpiPmState,
    sci: Arc<dyn IrqLine>,
    events: Arc<dyn GuestEventSink>,
    metrics: Arc<DeviceMetrics>,
    log_power: GuestLog,
    log_sleep: GuestLog,
}

impl AcpiPm {
    /// A PM block raising `sci` (IRQ 9, level) and reporting power-off and reboot to
    /// `events`.
    pub fn new(sci: Arc<dyn IrqLine>, events: Arc<dyn GuestEventSink>) -> Self {
        Self {
            state: AcpiPmState::default(),
            sci,
            events,
            metrics: Arc::default(),
            log_power: GuestLog::default(),
            log_sleep: GuestLog::default(),
        }
    }

    /// Bad-access and interrupt-error counters.
    pub fn metrics(&self) -> Arc<DeviceMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The register state.
    pub fn state(&self) -> AcpiPmState {
        self.state
    }

    /// Restores the register state and drives the SCI to match it.
    pub fn set_state(&mut self, state: &AcpiPmState) {
        self.state = AcpiPmState {
            pm1_cnt: state.pm1_cnt & !SLP_EN,
            ..*state
        };
        self.update_sci();
    }

    /// Presses the (fixed-feature) power button: sets PWRBTN_STS and updates the SCI.
    pub fn press_power_button(&mut self) {
        self.state.pm1_sts |= PWRBTN;
        self.update_sci();
    }

    fn update_sci(&self) {
        let high = self.state.pm1_sts & self.state.pm1_en != 0;
        if let Err(e) = self.sci.set_level(high) {
            self.metrics.irq_error("acpi-pm", &e);
        }
    }

    fn read_byte(&self, offset: u64) -> u8 {
        let reg = |v: u16| v.to_le_bytes()[usize::from(offset % 2 == 1)];
        match offset {
            0 | 1 => reg(self.state.pm1_sts),
            2 | 3 => reg(self.state.pm1_en),
            4 | 5 => reg((self.state.pm1_cnt | SCI_EN) & !SLP_EN),
            _ => 0,
        }
    }

    fn write_cnt(&mut self, update: Masked) {
        let cnt = update.apply(self.state.pm1_cnt);
        self.state.pm1_cnt = cnt & !SLP_EN;
        if cnt & SLP_EN == 0 {
            return;
        }
        let slp_typ = (cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if slp_typ == SLP_TYP_S5 {
            self.log_power
                .info(format_args!("acpi-pm: guest entered S5 (power off)"));
            self.events.notify(GuestEvent::PowerOff);
        } else {
            self.log_sleep.warn(format_args!(
                "acpi-pm: ignoring sleep request with SLP_TYP {slp_typ}"
            ));
        }
    }

    fn valid(&self, what: &str, offset: u64, len: usize) -> bool {
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= PM_LEN);
        let ok = matches!(len, 1 | 2 | 4) && fits;
        if !ok {
            self.metrics.bad_access(
                "acpi-pm",
                format_args!("{what} of {len} bytes at offset {offset:#x}"),
            );
        }
        ok
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.valid("read", offset, data.len()) {
            fill_invalid(data);
            return;
        }
        for (off, b) in (offset..).zip(data.iter_mut()) {
            *b = self.read_byte(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if !self.valid("write", offset, data.len()) {
            return;
        }
        let (mut sts, mut en, mut cnt) = (Masked::default(), Masked::default(), Masked::default());
        let mut reset = None;
        for (off, &b) in (offset..).zip(data) {
            match off {
                0 | 1 => sts.put(off - OFF_STS, b),
                2 | 3 => en.put(off - OFF_EN, b),
                4 | 5 => cnt.put(off - OFF_CNT, b),
                OFF_RESET => reset = Some(b),
                _ => {}
            }
        }
        self.state.pm1_sts &= !(sts.value & sts.mask);
        self.state.pm1_en = en.apply(self.state.pm1_en);
        if cnt.mask != 0 {
            self.write_cnt(cnt);
        }
        self.update_sci();
        match reset {
            Some(RESET_VALUE) => {
                self.log_power
                    .info(format_args!("acpi-pm: guest wrote the reset register"));
                self.events.notify(GuestEvent::Reboot);
            }
            Some(v) => tracing::debug!("acpi-pm: ignoring reset register value {v:#04x}"),
            None => {}
        }
    }
}

#[cfg(test)]
#[path = "acpi_pm_tests.rs"]
mod tests;
