//! The hypervisor layer: the only crate in thinvm that names `kvm-ioctls` or `kvm-bindings`.
//!
//! It offers a [`Hypervisor`] that makes [`Vm`]s, which make [`Vcpu`]s. vCPU exits come back
//! as the hypervisor-neutral [`VcpuExit`], and register state goes in and out as the neutral
//! types of [`arch`], so the rest of the VMM never sees a KVM structure.

mod cpuid;
mod error;
mod host;
mod irq;
mod kvm;
mod vcpu;
mod vm;

pub use arch::{DescriptorTable, Regs, SRegs, Segment};
pub use cpuid::CpuTopology;
pub use error::{Error, Result};
pub use host::{probe_host, HostKvm};
pub use irq::{MsiRoute, FIRST_MSI_GSI, IOAPIC_PINS};
pub use kvm::Hypervisor;
pub use vcpu::{Kicker, Vcpu, VcpuExit};
pub use vm::{MemoryRegion, Vm};
