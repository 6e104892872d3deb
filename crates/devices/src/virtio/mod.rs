//! virtio 1.x devices over PCI.
//!
//! - [`VirtioDevice`]: what a device model implements (type, features, config space, activate,
//!   reset). Devices see guest memory, their queues, the queues' notification eventfds and a
//!   [`VirtioInterrupt`]; never KVM.
//! - [`VirtioPciDevice`]: the modern (1.x only) PCI transport: common, notify, ISR and device
//!   configuration capabilities in BAR 0, the MSI-X table and PBA in the same BAR.
//! - [`WorkerThread`]: a named thread that waits on the queue eventfds (ioeventfds underneath,
//!   so notifications never pass through a vCPU exit) and is stopped and joined on drop.
//! - [`block`]: virtio-blk on the storage crate's backends; [`rng`]: virtio-rng from getrandom;
//!   [`net`]: virtio-net on a TAP device; [`vsock`]: virtio-vsock bridged to Unix sockets;
//!   [`balloon`]: virtio-balloon (memory back to the host).

pub mod balloon;
pub mod block;
mod common;
pub mod fuzz;
pub mod net;
mod pci;
pub mod rng;
pub mod vsock;
mod worker;

use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use common::{CommonConfig, CommonStats, StatusAction};
pub use pci::{
    msix_vectors, notify_address, TransportStats, VirtioPciDevice, VirtioPciError,
    NOTIFY_OFF_MULTIPLIER, VIRTIO_BAR, VIRTIO_BAR_SIZE,
};
pub use worker::{Poller, QueueHandler, WorkerThread};

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is ready, queues may be used.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error it cannot recover from without a reset.
pub const STATUS_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// Feature: virtio 1.x (modern) device; mandatory here.
pub const F_VERSION_1: u64 = 1 << 32;
/// Feature: indirect descriptors.
pub const F_RING_INDIRECT_DESC: u64 = 1 << 28;
/// Feature: used_event / avail_event notification suppression.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;

/// "No MSI-X vector" in the vector registers.
pub const NO_VECTOR: u16 = 0xffff;

/// Device type IDs.
pub mod device_type {
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Network card.
    pub const NET: u32 = 1;
    /// Socket device (vsock).
    pub const VSOCK: u32 = 19;
    /// Memory balloon.
    pub const BALLOON: u32 = 5;
}

/// Which interrupt a device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device configuration changed.
    Config,
    /// The device used buffers of queue `n`.
    Queue(u16),
}

/// How a device raises interrupts (the transport implements it with MSI-X).
pub trait VirtioInterrupt: Send + Sync {
    /// Raises the interrupt of `kind`.
    fn trigger(&self, kind: InterruptKind) -> io::Result<()>;
    /// An eventfd that raises the interrupt of `kind` when written, for a back-end outside the
    /// VMM (vhost): the MSI-X vector the driver chose for it, as a KVM irqfd underneath. `None`
    /// when the transport has none (no vector assigned, or no such eventfd).
    fn irqfd(&self, kind: InterruptKind) -> Option<EventFd> {
        let _ = kind;
        None
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver gave a wrong number of queues.
    #[error("{device}: activated with {got} queues, expects {want}")]
    QueueCount {
        /// Device name.
        device: &'static str,
        /// Queues given.
        got: usize,
        /// Queues expected.
        want: usize,
    },
    /// The device's back-end refused the configuration (a vhost ioctl failed, or a ring the
    /// driver set up cannot be given to it).
    #[error("{device}: {reason}")]
    Backend {
        /// Device name.
        device: &'static str,
        /// What failed.
        reason: String,
    },
    /// The worker thread or an eventfd could not be made.
    #[error("{device}: cannot start its worker: {source}")]
    Worker {
        /// Device name.
        device: &'static str,
        /// OS error.
        #[source]
        source: io::Error,
    },
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// Device type (see [`device_type`]).
    fn device_type(&self) -> u32;
    /// Short name for logs and thread names.
    fn name(&self) -> &'static str;
    /// Maximum size of each queue (their count is the device's queue count).
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (including [`F_VERSION_1`]).
    fn features(&self) -> u64;
    /// The driver accepted `features` (a subset of [`VirtioDevice::features`]).
    fn ack_features(&mut self, features: u64) {
        let _ = features;
    }
    /// Reads the device configuration space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The transport's interrupt, given once when the device is wrapped, for devices whose
    /// configuration changes on the VMM's initiative: raising [`InterruptKind::Config`] bumps
    /// the configuration generation and interrupts the driver.
    fn set_config_interrupt(&mut self, interrupt: Arc<dyn VirtioInterrupt>) {
        let _ = interrupt;
    }
    /// Writes the device configuration space (ignored by devices without writable fields).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// Starts serving `queues`; `events[i]` is signalled when the driver notifies queue `i`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        events: Vec<EventFd>,
    ) -> Result<(), ActivateError>;
    /// Stops serving the queues (joins the worker); the device can be activated again.
    fn reset(&mut self);
}

/// Copies `src` (a device's config structure) into `data` from `offset`; bytes past the end
/// read as zero.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(avail) = src.get(start..) {
        let n = avail.len().min(data.len());
        data[..n].copy_from_slice(&avail[..n]);
    }
}

#[cfg(test)]
pub(crate) mod testmem;
