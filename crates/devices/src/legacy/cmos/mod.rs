//! MC146818 RTC and CMOS RAM at ports 0x70 (index) and 0x71 (data).
//!
//! - Time registers (0, 2, 4, 6, 7, 8, 9 and the century at 0x32) show the host clock
//!   (UTC) plus an offset the guest can set (see [`rtc`]), in BCD unless register B's DM
//!   bit is set, 24-hour unless register B's 24/12 bit is cleared.
//! - Register A reads with UIP clear (bit 7), divider 0x26 by default; B defaults to 0x02
//!   (24 h, BCD); C is computed at read time and cleared by the read (UF is set when a
//!   second has passed since the previous read of C; AF and PF are never set); D reads
//!   0x80 (valid RAM and time). No RTC interrupt (IRQ 8) is raised.
//! - Memory size registers, from [`Cmos::new`]: 0x15/0x16 base memory (KiB), 0x17/0x18 and
//!   0x30/0x31 extended memory above 1 MiB (KiB, at most 0xffff), 0x34/0x35 memory above
//!   16 MiB below 4 GiB (64 KiB units), 0x5b..=0x5d memory above 4 GiB (64 KiB units).
//! - The rest of the 128 bytes is plain RAM.

mod calendar;
mod rtc;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{fill_invalid, DeviceMetrics, GuestLog};
use crate::bus::BusDevice;
use calendar::DateTime;
use rtc::{is_time_reg, B_24H};

/// Base port (index register; the data register follows).
pub const CMOS_BASE: u64 = 0x70;
/// Length of the port range.
pub const CMOS_LEN: u64 = 2;

/// The clock the RTC reads: time since 1970-01-01 00:00:00 UTC.
pub type CmosClock = Box<dyn Fn() -> Duration + Send>;

const RAM_SIZE: usize = 128;

const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;

/// Register A: update in progress (read-only).
const A_UIP: u8 = 0x80;
/// Register A default: 32.768 kHz time base, 1024 Hz periodic rate.
const A_DEFAULT: u8 = 0x26;
/// Register B: update-ended, alarm and periodic interrupt enables.
const B_IRQ_ENABLES: u8 = 0x70;
/// Register C: interrupt request flag.
const C_IRQF: u8 = 0x80;
/// Register C: update-ended flag.
const C_UF: u8 = 0x10;
/// Register D: valid RAM and time.
const D_VRT: u8 = 0x80;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The plain state of [`Cmos`]: the index register, the 128 bytes of RAM (the time
/// registers in it are unused: time comes from the clock) and the guest's clock offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmosState {
    /// Selected register (0..=0x7f).
    pub index: u8,
    /// CMOS RAM, including registers A, B and the memory size bytes.
    pub ram: [u8; RAM_SIZE],
    /// Seconds the guest moved its RTC away from the host clock.
    pub clock_offset_secs: i64,
}

/// The RTC and CMOS RAM device.
pub struct Cmos {
    state: CmosState,
    clock: CmosClock,
    /// Whole second of the clock when register C was last read.
    c_read_secs: u64,
    /// The time being set while register B's SET bit is up.
    latched: Option<DateTime>,
    metrics: Arc<DeviceMetrics>,
    log_time: GuestLog,
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
            state: CmosState {
                index: 0,
                ram,
                clock_offset_secs: 0,
            },
            clock: Box::new(host_clock),
            c_read_secs: 0,
            latched: None,
            metrics: Arc::default(),
            log_time: GuestLog::default(),
        };
        cmos.c_read_secs = cmos.clock_secs();
        cmos
    }

    /// Replaces the clock (tests, or a guest started with a fixed time).
    pub fn with_clock(mut self, clock: CmosClock) -> Self {
        self.clock = clock;
        self.c_read_secs = self.clock_secs();
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

    /// Restores the plain state (the index is masked to 7 bits; a clock set that was in
    /// progress is dropped).
    pub fn set_state(&mut self, state: &CmosState) {
        self.state = state.clone();
        self.state.index &= 0x7f;
        self.latched = None;
        self.state.ram[usize::from(REG_B)] &= !rtc::B_SET;
    }

    /// Whole seconds of the host (or injected) clock.
    fn clock_secs(&self) -> u64 {
        (self.clock)().as_secs()
    }

    fn reg(&self, reg: u8) -> u8 {
        self.state.ram[usize::from(reg & 0x7f)]
    }

    fn read_c(&mut self) -> u8 {
        let now = self.clock_secs();
        let mut flags = if now > self.c_read_secs { C_UF } else { 0 };
        if flags & self.reg(REG_B) & B_IRQ_ENABLES != 0 {
            flags |= C_IRQF;
        }
        self.c_read_secs = now;
        flags
    }

    fn read_data(&mut self) -> u8 {
        match self.state.index {
            reg if is_time_reg(reg) => self.read_time(reg),
            REG_A => self.reg(REG_A) & !A_UIP,
            REG_C => self.read_c(),
            REG_D => D_VRT,
            reg => self.reg(reg),
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.state.index {
            reg if is_time_reg(reg) => self.write_time(reg, value),
            REG_A => self.state.ram[usize::from(REG_A)] = value & !A_UIP,
            REG_B => self.write_b(value),
            REG_C | REG_D => {}
            reg => self.state.ram[usize::from(reg & 0x7f)] = value,
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
