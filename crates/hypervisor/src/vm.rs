//! A KVM virtual machine: memory slots, the in-kernel interrupt controllers, irqfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::cpuid::{self, CpuTopology};
use crate::{Error, Result, Vcpu};

/// Where KVM keeps the real-mode TSS (three pages) and the EPT identity map page (Intel only):
/// just below the 4 GiB boundary, inside the MMIO hole and away from every device.
const TSS_ADDRESS: usize = 0xfffb_d000;
const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// A range of host memory that backs guest physical memory.
#[derive(Clone, Copy, Debug)]
pub struct MemoryRegion {
    pub guest_addr: u64,
    pub size: u64,
    pub host_addr: u64,
}

/// One VM. Shared by the vCPU threads and the device threads (all methods take `&self`).
pub struct Vm {
    pub(crate) fd: VmFd,
    cpuid: CpuId,
    vcpus: u8,
}

impl Vm {
    pub(crate) fn new(fd: VmFd, cpuid: CpuId, vcpus: u8) -> Result<Self> {
        Ok(Vm { fd, cpuid, vcpus })
    }

    /// Sets up the x86 platform pieces that live in KVM: TSS, identity map, IOAPIC + PIC + LAPICs,
    /// and the PIT. Call once, before creating vCPUs.
    pub fn setup_platform(&self) -> Result<()> {
        self.fd
            .set_identity_map_address(IDENTITY_MAP_ADDRESS)
            .map_err(Error::ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .set_tss_address(TSS_ADDRESS)
            .map_err(Error::ioctl("KVM_SET_TSS_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(Error::ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(Error::ioctl("KVM_CREATE_PIT2"))?;
        Ok(())
    }

    /// Maps `region` into the guest as memory slot `slot`.
    ///
    /// # Safety
    /// `region.host_addr .. + region.size` must be a mapping that stays valid and is not unmapped
    /// while the VM exists: KVM reads and writes it on the guest's behalf.
    pub unsafe fn map_memory(&self, slot: u32, region: MemoryRegion) -> Result<()> {
        let mem = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.guest_addr,
            memory_size: region.size,
            userspace_addr: region.host_addr,
        };
        // SAFETY: the caller promises the host range is a live mapping for the VM's lifetime.
        unsafe { self.fd.set_user_memory_region(mem) }
            .map_err(Error::ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Makes every write to `evt` inject an edge on interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(Error::ioctl("KVM_IRQFD"))
    }

    /// Drives a level-triggered line of the in-kernel IOAPIC/PIC.
    pub fn set_irq_line(&self, gsi: u32, high: bool) -> Result<()> {
        self.fd
            .set_irq_line(gsi, high)
            .map_err(Error::ioctl("KVM_IRQ_LINE"))
    }

    /// Creates vCPU `index` with its CPUID (topology of `vcpus` cores in one socket), boot MSRs,
    /// FPU and local APIC set up.
    pub fn create_vcpu(&self, index: u8) -> Result<Vcpu> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(Error::ioctl("KVM_CREATE_VCPU"))?;
        let mut cpuid = self.cpuid.clone();
        cpuid::patch(
            &mut cpuid,
            CpuTopology {
                index,
                count: self.vcpus,
            },
        );
        let vcpu = Vcpu::new(fd, index);
        vcpu.configure(&cpuid)?;
        Ok(vcpu)
    }
}
