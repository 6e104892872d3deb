//! One PCI function's type-0 configuration space: registers, a write mask that makes every
//! read-only bit read-only, memory BARs (32- and 64-bit) and a capability list.
//!
//! Guest writes go through the write mask only, so a hostile guest can change nothing but the
//! bits a real device lets it change; BAR sizing falls out of the mask (writing all ones reads
//! back the size mask with the type bits).

/// Size of the conventional configuration space.
pub const CONFIG_SIZE: usize = 256;
/// Size of the PCIe extended configuration space (what ECAM addresses); bytes past
/// [`CONFIG_SIZE`] read as zero and ignore writes.
pub const EXT_CONFIG_SIZE: usize = 4096;
/// Offset of the first BAR.
pub const BAR0: usize = 0x10;
/// Number of BARs of a type-0 header.
pub const NUM_BARS: usize = 6;
/// Command register offset.
pub const COMMAND: usize = 0x04;
/// Command register: memory space decode enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Status register offset.
pub const STATUS: usize = 0x06;
/// Status register: the capability list pointer is valid.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Capability pointer offset.
pub const CAP_PTR: usize = 0x34;
/// First offset a capability may use.
const FIRST_CAP: usize = 0x40;
/// Smallest memory BAR thinvm creates (one page: keeps BARs page aligned for KVM).
pub const MIN_BAR_SIZE: u64 = 0x1000;

/// Identity of a PCI function.
#[derive(Clone, Copy, Debug)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class << 16 | subclass << 8 | programming interface.
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// Width of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR (one register).
    Mem32,
    /// 64-bit memory BAR (two registers).
    Mem64,
}

/// A memory BAR as the VMM created it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// Size in bytes (a power of two, at least [`MIN_BAR_SIZE`]).
    pub size: u64,
    /// 32- or 64-bit.
    pub kind: BarKind,
}

/// Why a BAR or capability could not be added (a VMM bug, never guest input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// BAR index out of range, or a 64-bit BAR in the last slot, or the slot is taken.
    #[error("BAR {index} ({kind:?}) cannot be placed in the header")]
    BarSlot {
        /// Requested index.
        index: usize,
        /// Requested kind.
        kind: BarKind,
    },
    /// Size not a power of two or below the minimum.
    #[error("BAR {index} size {size:#x} is not a power of two of at least {MIN_BAR_SIZE:#x}")]
    BarSize {
        /// BAR index.
        index: usize,
        /// Requested size.
        size: u64,
    },
    /// Address not aligned to the size or too wide for the BAR.
    #[error("BAR {index} address {addr:#x} does not suit a BAR of size {size:#x}")]
    BarAddress {
        /// BAR index.
        index: usize,
        /// Requested address.
        addr: u64,
        /// BAR size.
        size: u64,
    },
    /// The capability does not fit in the configuration space.
    #[error("capability of {len} bytes does not fit in configuration space")]
    CapabilitySpace {
        /// Capability length.
        len: usize,
    },
}

/// The configuration space of one function.
#[derive(Clone)]
pub struct PciConfig {
    regs: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    bars: [Option<BarInfo>; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfig {
    /// A type-0 header with `ids`, every register read-only except the command bits a driver
    /// uses (I/O, memory, bus master, INTx disable), cache line size, latency timer and the
    /// interrupt line.
    pub fn new(ids: PciIds) -> Self {
        let mut c = PciConfig {
            regs: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bars: [None; NUM_BARS],
            last_cap: None,
            next_cap: FIRST_CAP,
        };
        c.set_u16(0x00, ids.vendor);
        c.set_u16(0x02, ids.device);
        c.regs[0x08] = ids.revision;
        c.regs[0x09] = ids.class as u8;
        c.regs[0x0a] = (ids.class >> 8) as u8;
        c.regs[0x0b] = (ids.class >> 16) as u8;
        c.set_u16(0x2c, ids.subsystem_vendor);
        c.set_u16(0x2e, ids.subsystem);
        c.wmask[COMMAND] = 0x07;
        c.wmask[COMMAND + 1] = 0x04;
        c.wmask[0x0c] = 0xff;
        c.wmask[0x0d] = 0xff;
        c.wmask[0x3c] = 0xff;
        c
    }

    /// Adds memory BAR `index` of `info.size` bytes, programmed at `addr`.
    pub fn add_bar(&mut self, index: usize, info: BarInfo, addr: u64) -> Result<(), ConfigError> {
        let regs = if info.kind == BarKind::Mem64 { 2 } else { 1 };
        let taken = |i: usize| self.bars.get(i).is_none_or(|b| b.is_some()) || self.is_upper(i);
        if (index..index + regs).any(taken) {
            return Err(ConfigError::BarSlot {
                index,
                kind: info.kind,
            });
        }
        let size = info.size;
        if !size.is_power_of_two() || size < MIN_BAR_SIZE {
            return Err(ConfigError::BarSize { index, size });
        }
        let limit = if info.kind == BarKind::Mem64 {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        if !addr.is_multiple_of(size) || addr.checked_add(size - 1).is_none_or(|end| end > limit) {
            return Err(ConfigError::BarAddress { index, addr, size });
        }
        let off = BAR0 + 4 * index;
        let mask = !(size - 1);
        let type_bits: u32 = if info.kind == BarKind::Mem64 { 0x4 } else { 0 };
        self.set_u32(off, addr as u32 | type_bits);
        self.set_wmask_u32(off, (mask as u32) & !0xf);
        if info.kind == BarKind::Mem64 {
            self.set_u32(off + 4, (addr >> 32) as u32);
            self.set_wmask_u32(off + 4, (mask >> 32) as u32);
        }
        self.bars[index] = Some(info);
        Ok(())
    }

    fn is_upper(&self, index: usize) -> bool {
        index > 0 && matches!(self.bars[index - 1], Some(b) if b.kind == BarKind::Mem64)
    }

    /// The BAR created at `index`, if any.
    pub fn bar(&self, index: usize) -> Option<BarInfo> {
        self.bars.get(index).copied().flatten()
    }

    /// Where the guest has BAR `index` now (`None` for no BAR there).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let info = self.bar(index)?;
        let off = BAR0 + 4 * index;
        let low = u64::from(self.u32_at(off) & !0xf);
        let high = match info.kind {
            BarKind::Mem64 => u64::from(self.u32_at(off + 4)) << 32,
            BarKind::Mem32 => 0,
        };
        Some(high | low)
    }

    /// Whether memory decoding is on (command register bit 1).
    pub fn memory_enabled(&self) -> bool {
        self.u16_at(COMMAND) & COMMAND_MEMORY != 0
    }

    /// Appends a capability. `data[0]` is the capability ID; `data[1]` (the next pointer) is
    /// filled in here. `wmask` (same length or shorter) says which bits the guest may write.
    /// Returns the capability's offset.
    pub fn add_capability(&mut self, data: &[u8], wmask: &[u8]) -> Result<usize, ConfigError> {
        let len = data.len();
        let off = self.next_cap;
        let end = off
            .checked_add(len)
            .filter(|&e| e <= CONFIG_SIZE && len >= 2);
        let end = end.ok_or(ConfigError::CapabilitySpace { len })?;
        self.regs[off..end].copy_from_slice(data);
        self.regs[off + 1] = 0;
        for (i, m) in wmask.iter().take(len).enumerate() {
            self.wmask[off + i] = *m;
        }
        match self.last_cap {
            Some(prev) => self.regs[prev + 1] = off as u8,
            None => {
                self.regs[CAP_PTR] = off as u8;
                let status = self.u16_at(STATUS) | STATUS_CAP_LIST;
                self.set_u16(STATUS, status);
            }
        }
        self.last_cap = Some(off);
        self.next_cap = end.next_multiple_of(4);
        Ok(off)
    }

    /// Guest read of `data.len()` bytes at `offset`. Accesses outside the extended space read
    /// as all ones; bytes between 256 and 4096 read as zero.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        let Some(end) = offset
            .checked_add(data.len())
            .filter(|&e| e <= EXT_CONFIG_SIZE)
        else {
            data.fill(0xff);
            return;
        };
        for (i, b) in (offset..end).zip(data.iter_mut()) {
            *b = self.regs.get(i).copied().unwrap_or(0);
        }
    }

    /// Guest write at `offset`: only the bits of the write mask change. Returns false when the
    /// access was outside the configuration space (nothing written).
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let Some(end) = offset
            .checked_add(data.len())
            .filter(|&e| e <= EXT_CONFIG_SIZE)
        else {
            return false;
        };
        for (i, v) in (offset..end).zip(data) {
            if let (Some(r), Some(m)) = (self.regs.get_mut(i), self.wmask.get(i)) {
                *r = (*r & !m) | (v & m);
            }
        }
        true
    }

    /// Reads a little-endian u16 register (0 past the space).
    pub fn u16_at(&self, off: usize) -> u16 {
        let mut b = [0; 2];
        self.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    /// Reads a little-endian u32 register (0 past the space).
    pub fn u32_at(&self, off: usize) -> u32 {
        let mut b = [0; 4];
        self.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Sets a register as the device (not the guest): ignores the write mask.
    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.set_bytes(off, &v.to_le_bytes());
    }

    /// Sets a 32-bit register as the device.
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.set_bytes(off, &v.to_le_bytes());
    }

    fn set_bytes(&mut self, off: usize, b: &[u8]) {
        if let Some(dst) = self.regs.get_mut(off..off.saturating_add(b.len())) {
            dst.copy_from_slice(b);
        }
    }

    fn set_wmask_u32(&mut self, off: usize, v: u32) {
        if let Some(dst) = self.wmask.get_mut(off..off + 4) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Offsets of the capabilities with ID `id`, following the list as a guest would (at most
    /// 48 hops, so a corrupt list cannot loop).
    pub fn find_capabilities(&self, id: u8) -> Vec<usize> {
        let mut found = Vec::new();
        let mut ptr = usize::from(self.regs[CAP_PTR] & !3);
        for _ in 0..48 {
            if ptr < FIRST_CAP || ptr + 2 > CONFIG_SIZE {
                break;
            }
            if self.regs[ptr] == id {
                found.push(ptr);
            }
            ptr = usize::from(self.regs[ptr + 1] & !3);
        }
        found
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
