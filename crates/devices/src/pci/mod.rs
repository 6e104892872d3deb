//! PCI: one root bus (bus 0) with a host bridge at 00:00.0, configuration access through ports
//! 0xCF8/0xCFC and ECAM, memory BARs and MSI-X.
//!
//! The VMM allocates every BAR (the guest finds them programmed and keeps them); a BAR is mapped
//! on the MMIO bus while the function's memory decoding is on, at the address its register holds,
//! so a guest that moves a BAR moves its mapping too.

mod config;
mod msix;
mod root;

pub use config::{
    BarInfo, BarKind, ConfigError, PciConfig, PciIds, BAR0, CAP_PTR, COMMAND, COMMAND_MEMORY,
    CONFIG_SIZE, EXT_CONFIG_SIZE, MIN_BAR_SIZE, NUM_BARS, STATUS, STATUS_CAP_LIST,
};
pub use msix::{
    MsiMessage, MsiSink, Msix, MsixStats, MSIX_CAP_ID, MSIX_CAP_LEN, MSIX_ENTRY_SIZE,
    MSIX_MAX_VECTORS,
};
pub use root::{
    HostBridge, PciConfigIo, PciConfigMmio, PciError, PciRoot, CONFIG_IO_BASE, CONFIG_IO_LEN,
};

/// A PCI function on the root bus.
pub trait PciDevice: Send {
    /// Its configuration space.
    fn config(&self) -> &PciConfig;
    /// Its configuration space, mutable.
    fn config_mut(&mut self) -> &mut PciConfig;
    /// Guest configuration read; the default reads the registers.
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    /// Guest configuration write; the default applies the write mask, then tells
    /// [`PciDevice::config_written`].
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        if self.config_mut().write(offset, data) {
            self.config_written(offset, data.len());
        }
    }
    /// Called after the guest changed `offset..offset + len` of configuration space.
    fn config_written(&mut self, offset: usize, len: usize) {
        let _ = (offset, len);
    }
    /// Guest read at `offset` inside BAR `bar`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Guest write at `offset` inside BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
}

#[cfg(test)]
#[path = "root_tests.rs"]
mod root_tests;
