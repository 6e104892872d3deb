//! Device models of the thinvm guest platform.
//!
//! - [`bus`]: the port-I/O / MMIO bus that dispatches guest accesses to devices.
//! - [`interrupt`]: the interrupt traits devices use ([`Interrupt`] for edge, [`IrqLine`] for
//!   level); the KVM plumbing behind them lives in the `vmm` crate.
//! - [`events`]: guest-initiated platform events (power-off, reboot, panic).
//! - [`legacy`]: the legacy PC devices (UART, i8042, CMOS RTC, pvpanic, ACPI PM).
//! - [`pci`]: the PCI root bus, configuration access, BARs and MSI-X.
//! - [`virtio`]: the virtio-pci transport, virtio-blk and virtio-rng, with their worker threads.
//!
//! This crate never talks to KVM: every device is unit-tested without /dev/kvm.

#![warn(missing_docs)]

pub mod bus;
pub mod events;
pub mod interrupt;
pub mod legacy;
pub mod pci;
pub mod virtio;

#[cfg(test)]
pub(crate) mod testutil;

pub use bus::{Bus, BusDevice, BusError};
pub use events::{GuestEvent, GuestEventSink};
pub use interrupt::{Interrupt, IrqLine};
