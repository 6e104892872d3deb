//! MC146818 RTC and CMOS RAM at ports 0x70 (index) and 0x71 (data).
//!
//! - Time registers (0, 2, 4, 6, 7, 8, 9 and the century at 0x32) are read from the host
//!   clock (UTC) at every read, in BCD unless register B's DM bit is set, 24-hour unless
//!   register B's 24/12 bit is cleared. Writes to them are ignored: the guest cannot set
//!   the clock (it keeps its own offset, as Linux does with NTP).
//! - Register A reads with UIP clear (bit 7), divider 0x26 by default; B defaults to 0x02
//!   (24 h, BCD); C is computed at read time and cleared by the read (UF is set when a
//!   second has passed since the previous read of C; AF and PF are never set); D reads
//!   0x80 (valid RAM and time). No RTC interrupt (IRQ 8) is raised.
//! - Memory size registers, from [`Cmos::new`]: 0x15/0x16 base memory (KiB), 0x17/0x18 and
//!   0x30/0x31 extended memory above 1 MiB (KiB, at most 0xffff), 0x34/0x35 memory above
//!   16 MiB below 4 GiB (64 KiB units), 0x5b..=0x5d memory above 4 GiB (64 KiB units).
//! - The rest of the 128 bytes is plain RAM.

mod calendar;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{fill_invalid, DeviceMetrics};
use crate::bus::BusDevice;
use calendar::DateTime;

/// Base port (index register; the data register follows).
pub const CMOS_BASE: u64 = 0x70;
/// Length of the port range.
pub const CMOS_LEN: u64 = 2;

/// The clock the RTC reads: time since 1970-01-01 00:00:00 UTC.
pub type CmosClock = Box<dyn Fn() -> Duration + Send>;

const RAM_SIZE: usize = 128;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Register A: update in progress (read-only).
const A_UIP: u8 = 0x80;
/// Register A default: 32.768 kHz time base, 1024 Hz periodic rate.
const A_DEFAULT: u8 = 0x26;
/// Register B: update-ended, alarm and periodic interrupt enables.
const B_IRQ_ENABLES: u8 = 0x70;
/// Register B: binary (not BCD) data mode.
const B_DM_BINARY: u8 = 0x04;
/// Register B: 24-hour mode.
const B_24H: u8 = 0x02;
/// Register C: interrupt request flag.
const C_IRQF: u8 = 0x80;
/// Register C: update-ended flag.
const C_UF: u8 = 0x10;
/// Register D: valid RAM and time.
const D_VRT: u8 = 0x80;
/// Hours register, 12-hour mode: PM flag.
const HOURS_PM: u8 = 0x80;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The plain state of [`Cmos`]: the index register and the 128 bytes of RAM (the time
/// registers in it are unused: time comes from the clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmosState {
    /// Selected register (0..=0x7f).
    pub index: u8,
    /// CMOS RAM, including registers A, B and the memory size bytes.
    pub ram: [u8; RAM_SIZE],
}

/// The RTC and CMOS RAM device.
pub struct Cmos {
    state: CmosState,
    clock: CmosClock,
    /// Whole second of the clock when register C was last read.
    c_read_secs: u64,
    metrics: Arc<DeviceMetrics>,
}

fn host_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn put_u16(ram: &mut [u8; RAM_SIZE], reg: usize, v: u64) {
    let v = u16::try_from(v).unwrap_or(u16::MAX).to_le_bytes();
    ram[reg] = v[0];
    ram[reg + 1] = v[1];
}

impl Cmos {
    /// A CMOS with `mem_below_4g` bytes of RAM below 4 GiB and `mem_above_4g` above,
    /// reading the host clock.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        let mut ram = [0u8; RAM_SIZE];
        ram[usize::from(REG_A)] = A_DEFAULT;
        ram[usize::from(REG_B)] = B_24H;
        ram[usize::from(REG_D)] = D_VRT;
        put_u16(&mut ram, 0x15, mem_below_4g.min(640 * KIB) / KIB);
        let extended = mem_below_4g.saturating_sub(MIB) / KIB;
        put_u16(&mut ram, 0x17, extended);
        put_u16(&mut ram, 0x30, extended);
        put_u16(
            &mut ram,
            0x34,
            mem_below_4g.saturating_sub(16 * MIB) / (64 * KIB),
        );
        let high = (mem_above_4g / (64 * KIB)).min(0xff_ffff).to_le_bytes();
        ram[0x5b..=0x5d].copy_from_slice(&high[..3]);
        let mut cmos = Self {
            state: CmosState { index: 0, ram },
            clock: Box::new(host_clock),
            c_read_secs: 0,
            metrics: Arc::default(),
        };
        cmos.c_read_secs = cmos.now_secs();
        cmos
    }

    /// Replaces the clock (tests, or a guest started with a fixed time).
    pub fn with_clock(mut self, clock: CmosClock) -> Self {
        self.clock = clock;
        self.c_read_secs = self.now_secs();
        self
    }

    /// Bad-access counters.
    pub fn metrics(&self) -> Arc<DeviceMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The plain state.
    pub fn state(&self) -> CmosState {
        self.state.clone()
    }

    /// Restores the plain state (the index is masked to 7 bits).
    pub fn set_state(&mut self, state: &CmosState) {
        self.state = state.clone();
        self.state.index &= 0x7f;
    }

    fn now_secs(&self) -> u64 {
        (self.clock)().as_secs()
    }

    fn reg(&self, reg: u8) -> u8 {
        self.state.ram[usize::from(reg & 0x7f)]
    }

    /// Encodes a time field in the data mode register B selects.
    fn encode(&self, v: u8) -> u8 {
        if self.reg(REG_B) & B_DM_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn hours(&self, h24: u8) -> u8 {
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

    fn read_c(&mut self) -> u8 {
        let now = self.now_secs();
        let mut flags = if now > self.c_read_secs { C_UF } else { 0 };
        if flags & self.reg(REG_B) & B_IRQ_ENABLES != 0 {
            flags |= C_IRQF;
        }
        self.c_read_secs = now;
        flags
    }

    fn read_data(&mut self) -> u8 {
        let index = self.state.index;
        let time = || DateTime::from_unix(self.now_secs());
        match index {
            REG_SECONDS => self.encode(time().second),
            REG_MINUTES => self.encode(time().minute),
            REG_HOURS => self.hours(time().hour),
            REG_WEEKDAY => self.encode(time().weekday),
            REG_DAY => self.encode(time().day),
            REG_MONTH => self.encode(time().month),
            REG_YEAR => self.encode((time().year % 100) as u8),
            REG_CENTURY => self.encode((time().year / 100) as u8),
            REG_A => self.reg(REG_A) & !A_UIP,
            REG_C => self.read_c(),
            REG_D => D_VRT,
            _ => self.reg(index),
        }
    }

    fn write_data(&mut self, value: u8) {
        let index = self.state.index;
        match index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY => {
                tracing::debug!("cmos: ignoring write of {value:#04x} to time register {index:#x}");
            }
            REG_A => self.state.ram[usize::from(REG_A)] = value & !A_UIP,
            REG_C | REG_D => {}
            _ => self.state.ram[usize::from(index & 0x7f)] = value,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (1, [byte]) => *byte = self.read_data(),
            // The index register is write-only.
            (0, [byte]) => *byte = 0xff,
            (_, data) => {
                self.metrics.bad_access(
                    "cmos",
                    format_args!("read of {} bytes at offset {offset}", data.len()),
                );
                fill_invalid(data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            // Bit 7 masks NMIs on real hardware; ignored here.
            (0, &[value]) => self.state.index = value & 0x7f,
            (1, &[value]) => self.write_data(value),
            _ => self.metrics.bad_access(
                "cmos",
                format_args!("write of {} bytes at offset {offset}", data.len()),
            ),
        }
    }
}

#[cfg(test)]
mod tests;
