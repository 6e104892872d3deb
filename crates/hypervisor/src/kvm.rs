//! The KVM system handle.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use crate::{Error, Result, Vm};

/// Capabilities without which thinvm cannot build a VM, named for the start-up check.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    // virtio-pci: MSI routes, queue notifications without an exit (any write length).
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::IoeventfdNoLength, "KVM_CAP_IOEVENTFD_NO_LENGTH"),
];

/// An open /dev/kvm.
pub struct Hypervisor {
    kvm: Kvm,
}

impl Hypervisor {
    /// Opens /dev/kvm and checks the API version and every capability thinvm relies on.
    pub fn new() -> Result<Self> {
        let kvm =
            Kvm::new().map_err(|e| Error::OpenKvm(std::io::Error::from_raw_os_error(e.errno())))?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(Error::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(Error::MissingCapability(name));
            }
        }
        Ok(Hypervisor { kvm })
    }

    /// The most vCPUs one VM may have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// The CPUID entries KVM can give guests, before any per-VM adjustment.
    pub(crate) fn supported_cpuid(&self) -> Result<CpuId> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::ioctl("KVM_GET_SUPPORTED_CPUID"))
    }

    /// Creates a VM with `vcpus` vCPUs planned (checked against the host's limit).
    pub fn create_vm(&self, vcpus: usize) -> Result<Vm> {
        let max = self.max_vcpus();
        if vcpus == 0 || vcpus > max {
            return Err(Error::TooManyVcpus {
                requested: vcpus,
                max,
            });
        }
        let fd = self
            .kvm
            .create_vm()
            .map_err(Error::ioctl("KVM_CREATE_VM"))?;
        let cpuid = self.supported_cpuid()?;
        Vm::new(fd, cpuid, vcpus as u8)
    }
}
