//! The clock half of the CMOS: time registers, their data modes, and setting the clock.
//!
//! The RTC shows `host clock + offset`. The guest sets it like real hardware: with SET
//! (register B bit 7) raised, writes go to a latched copy that is committed as a new
//! offset when SET drops; without SET each field write takes effect at once. A time that
//! is not a valid date (or before 1970) is not committed and the clock keeps running.

use super::calendar::DateTime;
use super::{Cmos, REG_B};

pub(super) const REG_SECONDS: u8 = 0x00;
pub(super) const REG_MINUTES: u8 = 0x02;
pub(super) const REG_HOURS: u8 = 0x04;
pub(super) const REG_WEEKDAY: u8 = 0x06;
pub(super) const REG_DAY: u8 = 0x07;
pub(super) const REG_MONTH: u8 = 0x08;
pub(super) const REG_YEAR: u8 = 0x09;
pub(super) const REG_CENTURY: u8 = 0x32;

/// Register B: halt updates to set the clock.
pub(super) const B_SET: u8 = 0x80;
/// Register B: binary (not BCD) data mode.
pub(super) const B_DM_BINARY: u8 = 0x04;
/// Register B: 24-hour mode.
pub(super) const B_24H: u8 = 0x02;
/// Hours register, 12-hour mode: PM flag.
pub(super) const HOURS_PM: u8 = 0x80;

/// Whether `reg` is one of the time registers.
pub(super) fn is_time_reg(reg: u8) -> bool {
    matches!(
        reg,
        REG_SECONDS
            | REG_MINUTES
            | REG_HOURS
            | REG_WEEKDAY
            | REG_DAY
            | REG_MONTH
            | REG_YEAR
            | REG_CENTURY
    )
}

impl Cmos {
    /// The current RTC time in seconds since the epoch.
    pub(super) fn rtc_secs(&self) -> u64 {
        self.clock_secs()
            .saturating_add_signed(self.state.clock_offset_secs)
    }

    /// The time the registers show: the latched copy while SET is up, else the clock.
    fn shown(&self) -> DateTime {
        self.latched
            .unwrap_or_else(|| DateTime::from_unix(self.rtc_secs()))
    }

    fn binary(&self) -> bool {
        self.reg(REG_B) & B_DM_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> Option<u8> {
        if self.binary() {
            return Some(v);
        }
        let (hi, lo) = (v >> 4, v & 0x0f);
        (hi <= 9 && lo <= 9).then_some(hi * 10 + lo)
    }

    fn encode_hours(&self, h24: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.encode(h24);
        }
        let h12 = match h24 % 12 {
            0 => 12,
            h => h,
        };
        let pm = if h24 >= 12 { HOURS_PM } else { 0 };
        self.encode(h12) | pm
    }

    fn decode_hours(&self, v: u8) -> Option<u8> {
        if self.reg(REG_B) & B_24H != 0 {
            return self.decode(v);
        }
        let h12 = self
            .decode(v & !HOURS_PM)
            .filter(|h| (1..=12).contains(h))?;
        let pm = if v & HOURS_PM != 0 { 12 } else { 0 };
        Some(h12 % 12 + pm)
    }

    /// Reads time register `reg` (one of [`is_time_reg`]).
    pub(super) fn read_time(&self, reg: u8) -> u8 {
        let t = self.shown();
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hours(t.hour),
            REG_WEEKDAY => self.encode(t.weekday),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode((t.year % 100) as u8),
            _ => self.encode((t.year / 100).min(99) as u8),
        }
    }

    /// Writes time register `reg`: into the latch while SET is up, else to the clock.
    pub(super) fn write_time(&mut self, reg: u8, value: u8) {
        let decoded = if reg == REG_HOURS {
            self.decode_hours(value)
        } else {
            self.decode(value)
        };
        let Some(v) = decoded.filter(|&v| v <= 99) else {
            self.log_time.warn(format_args!(
                "cmos: ignoring write of {value:#04x} to time register {reg:#x}: not a valid value"
            ));
            return;
        };
        let mut t = self.shown();
        match reg {
            REG_SECONDS => t.second = v,
            REG_MINUTES => t.minute = v,
            REG_HOURS => t.hour = v,
            REG_DAY => t.day = v,
            REG_MONTH => t.month = v,
            REG_YEAR => t.year = t.year / 100 * 100 + u32::from(v),
            REG_CENTURY => t.year = u32::from(v) * 100 + t.year % 100,
            // The weekday follows from the date.
            _ => return,
        }
        if self.latched.is_some() {
            self.latched = Some(t);
        } else {
            self.commit(t);
        }
    }

    /// Handles a write of register B: raising SET latches the time, dropping it commits.
    pub(super) fn write_b(&mut self, value: u8) {
        let was_set = self.reg(REG_B) & B_SET != 0;
        let set = value & B_SET != 0;
        if set && !was_set {
            self.latched = Some(DateTime::from_unix(self.rtc_secs()));
        }
        self.state.ram[usize::from(REG_B)] = value;
        if !set {
            if let Some(t) = self.latched.take() {
                self.commit(t);
            }
        }
    }

    /// Makes the RTC show `t` now, by moving the offset from the host clock.
    fn commit(&mut self, t: DateTime) {
        let Some(secs) = t.to_unix() else {
            self.log_time.warn(format_args!(
                "cmos: guest set an invalid time {t:?}; ignored"
            ));
            return;
        };
        // Both values are below 2^63 (to_unix stops at year 9999; the host clock is far
        // below), so the difference cannot overflow i128 nor, in practice, i64.
        let offset = i128::from(secs) - i128::from(self.clock_secs());
        self.state.clock_offset_secs = i64::try_from(offset).unwrap_or(0);
    }
}
