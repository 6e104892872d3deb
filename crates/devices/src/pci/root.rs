//! The root bus: slots, configuration access mechanisms and BAR mappings.

use std::sync::{Arc, Mutex, MutexGuard};

use super::config::{PciConfig, PciIds, NUM_BARS};
use super::PciDevice;
use crate::bus::{Bus, BusDevice};
use crate::legacy::GuestLog;

/// Base port of the configuration mechanism #1 (address at 0xCF8, data at 0xCFC).
pub const CONFIG_IO_BASE: u64 = 0xcf8;
/// Ports of configuration mechanism #1.
pub const CONFIG_IO_LEN: u64 = 8;
const SLOTS: usize = 32;

/// Why a device could not be put on the bus.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// All 32 slots are taken.
    #[error("the PCI root bus has no free slot (32 used)")]
    NoSlot,
    /// The slot is taken or out of range.
    #[error("PCI slot {0} is taken or does not exist")]
    SlotTaken(u8),
}

/// A shared PCI device.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Slot {
    dev: SharedPciDevice,
    /// (base, len) where each BAR is on the MMIO bus now.
    mapped: [Option<(u64, u64)>; NUM_BARS],
}

/// Bus 0: up to 32 single-function devices; slot 0 is the host bridge.
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    mmio: Bus,
    log: GuestLog,
}

impl PciRoot {
    /// A root bus with the host bridge at 00:00.0, mapping BARs on `mmio`.
    pub fn new(mmio: Bus) -> Self {
        let mut slots: Vec<Option<Slot>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(Slot {
            dev: Arc::new(Mutex::new(HostBridge::new())),
            mapped: [None; NUM_BARS],
        });
        PciRoot {
            slots,
            mmio,
            log: GuestLog::default(),
        }
    }

    /// Puts `dev` in the first free slot; returns the slot (device) number.
    pub fn add_device(&mut self, dev: SharedPciDevice) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::NoSlot)?;
        self.slots[slot] = Some(Slot {
            dev,
            mapped: [None; NUM_BARS],
        });
        self.update_bars(slot);
        Ok(slot as u8)
    }

    /// Configuration read of device `dev` (function 0 only; others read all ones).
    pub fn read(&self, dev: u8, func: u8, offset: usize, data: &mut [u8]) {
        match self.slot(dev, func) {
            Some(s) => lock(&s.dev).read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Configuration write of device `dev`; then maps the BARs as the registers now say.
    pub fn write(&mut self, dev: u8, func: u8, offset: usize, data: &[u8]) {
        let Some(s) = self.slot(dev, func) else {
            return;
        };
        lock(&s.dev).write_config(offset, data);
        self.update_bars(usize::from(dev));
    }

    fn slot(&self, dev: u8, func: u8) -> Option<&Slot> {
        if func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.as_ref()
    }

    /// Maps each BAR where its register points while memory decoding is on; unmaps it otherwise.
    fn update_bars(&mut self, slot: usize) {
        let Some(Some(s)) = self.slots.get_mut(slot) else {
            return;
        };
        let want: [Option<(u64, u64)>; NUM_BARS] = {
            let d = lock(&s.dev);
            let c: &PciConfig = d.config();
            std::array::from_fn(|i| {
                let info = c.bar(i)?;
                let addr = c.bar_address(i)?;
                (c.memory_enabled() && addr != 0).then_some((addr, info.size))
            })
        };
        for (bar, target) in want.iter().enumerate() {
            if s.mapped[bar] == *target {
                continue;
            }
            if let Some((base, _)) = s.mapped[bar].take() {
                self.mmio.remove(base);
            }
            if let Some((base, len)) = *target {
                let region = Arc::new(Mutex::new(BarRegion {
                    dev: s.dev.clone(),
                    bar,
                }));
                match self.mmio.insert(region, base, len) {
                    Ok(()) => s.mapped[bar] = Some((base, len)),
                    Err(e) => self.log.warn(format_args!(
                        "pci 00:{slot:02x}.0: BAR {bar} not mapped at {base:#x}: {e}"
                    )),
                }
            }
        }
    }
}

/// One BAR of one device, as an MMIO bus range.
struct BarRegion {
    dev: SharedPciDevice,
    bar: usize,
}

impl BusDevice for BarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.dev).read_bar(self.bar, offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.dev).write_bar(self.bar, offset, data);
    }
}

/// The host bridge at 00:00.0 (class 06 00 00), no BARs.
pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    /// A host bridge with thinvm's IDs (Red Hat's vendor ID, its generic PCIe host device ID).
    pub fn new() -> Self {
        HostBridge {
            config: PciConfig::new(PciIds {
                vendor: 0x1b36,
                device: 0x0008,
                revision: 0,
                class: 0x06_00_00,
                subsystem_vendor: 0x1b36,
                subsystem: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// Configuration mechanism #1: a BusDevice for ports 0xCF8..0xD00.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    /// Serves `root`'s configuration space through ports.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigIo { root, address: 0 }
    }

    /// (device, function, register offset) of the current address, if enabled and on bus 0.
    fn target(&self, port_off: u64) -> Option<(u8, u8, usize)> {
        if self.address & 0x8000_0000 == 0 || (self.address >> 16) & 0xff != 0 {
            return None;
        }
        let dev = ((self.address >> 11) & 0x1f) as u8;
        let func = ((self.address >> 8) & 0x7) as u8;
        let reg = (self.address & 0xfc) as usize + (port_off as usize - 4);
        Some((dev, func, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let end = offset.saturating_add(data.len() as u64);
        if end <= 4 {
            let bytes = self.address.to_le_bytes();
            data.copy_from_slice(&bytes[offset as usize..end as usize]);
        } else if offset >= 4 && end <= 8 {
            match self.target(offset) {
                Some((d, f, reg)) => lock(&self.root).read(d, f, reg, data),
                None => data.fill(0xff),
            }
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        if end <= 4 {
            let mut bytes = self.address.to_le_bytes();
            bytes[offset as usize..end as usize].copy_from_slice(data);
            self.address = u32::from_le_bytes(bytes);
        } else if offset >= 4 && end <= 8 {
            if let Some((d, f, reg)) = self.target(offset) {
                lock(&self.root).write(d, f, reg, data);
            }
        }
    }
}

/// ECAM (memory-mapped configuration): a BusDevice for the ECAM window; bus 0 only.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    /// Serves `root`'s configuration space through ECAM.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigMmio { root }
    }

    fn target(offset: u64, len: usize) -> Option<(u8, u8, usize)> {
        let reg = (offset & 0xfff) as usize;
        if offset >> 20 != 0 || reg + len > 0x1000 {
            return None;
        }
        Some((
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 7) as u8,
            reg,
        ))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::target(offset, data.len()) {
            Some((d, f, reg)) => lock(&self.root).read(d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((d, f, reg)) = Self::target(offset, data.len()) {
            lock(&self.root).write(d, f, reg, data);
        }
    }
}
