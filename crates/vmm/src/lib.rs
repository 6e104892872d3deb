//! One VM: guest memory, vCPU threads, the platform devices, and its control.
//!
//! `vmm` is the only crate that names `hypervisor`; it wires `boot` (what to load) and `devices`
//! (what the guest talks to) onto it.

pub mod bench;
pub mod console;
mod counters;
mod devices;
mod error;
pub mod exit;
pub mod memory;
pub mod pci;
pub mod signals;
pub mod vcpu;
mod vm;

pub use ::devices::virtio::balloon::{BalloonCounters, BalloonHandle};
pub use ::devices::virtio::vsock::valid_cid as valid_vsock_cid;
pub use counters::{CounterGroup, DeviceCounters};
pub use error::Error;
pub use exit::{ExitReason, ExitSignal};
pub use hypervisor::{probe_host, DescriptorTable, HostKvm, Regs, SRegs, Segment};
pub use pci::{BalloonConfig, DiskConfig, NetConfig, PciBus, VsockConfig};
pub use vm::{Payload, Vm, VmConfig};
