//! The register state the boot vCPU starts with, in a hypervisor-neutral form.
//!
//! The `vmm` crate copies these into the hypervisor's register structures; this crate never
//! names KVM.

pub use arch::{DescriptorTable, Regs, SRegs, Segment};
use vm_memory::GuestAddress;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, paging on, `rsi` = zero page.
    #[default]
    Linux64,
    /// Xen PVH: 32-bit protected mode, paging off, `rbx` = `hvm_start_info`.
    Pvh,
}

/// Everything the VMM needs to start the boot vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct EntryState {
    /// The entry protocol chosen from the kernel format.
    pub protocol: BootProtocol,
    /// General purpose registers.
    pub regs: Regs,
    /// Segment, control and descriptor table registers.
    pub sregs: SRegs,
    /// First guest address past the kernel image (for information).
    pub kernel_end: GuestAddress,
}

/// CR0: protection enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS reset value (reserved bit 1).
pub const RFLAGS_RESET: u64 = 0x2;

fn flat_sregs(code_index: usize) -> SRegs {
    use crate::gdt::{gdt_register, idt_register, null_ldt, segment_from_gdt, BOOT_GDT};
    let data = segment_from_gdt(&BOOT_GDT, crate::gdt::DATA_INDEX);
    SRegs {
        cs: segment_from_gdt(&BOOT_GDT, code_index),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: segment_from_gdt(&BOOT_GDT, crate::gdt::TSS_INDEX),
        ldt: null_ldt(),
        gdt: gdt_register(),
        idt: idt_register(),
        ..SRegs::default()
    }
}

/// Entry state of the Linux 64-bit boot protocol: long mode with the identity map at `cr3`,
/// `rsi` = zero page.
pub(crate) fn linux64(rip: u64, cr3: u64, kernel_end: u64) -> EntryState {
    use crate::layout::{BOOT_STACK_POINTER, ZERO_PAGE_START};
    EntryState {
        protocol: BootProtocol::Linux64,
        regs: Regs {
            rip,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            rflags: RFLAGS_RESET,
            ..Regs::default()
        },
        sregs: SRegs {
            cr0: X86_CR0_PE | X86_CR0_ET | X86_CR0_PG,
            cr3,
            cr4: X86_CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            ..flat_sregs(crate::gdt::CODE64_INDEX)
        },
        kernel_end: GuestAddress(kernel_end),
    }
}

/// Entry state of PVH: 32-bit protected mode, paging off, `rbx` = `hvm_start_info`.
pub(crate) fn pvh(rip: u64, start_info: u64, kernel_end: u64) -> EntryState {
    use crate::layout::BOOT_STACK_POINTER;
    EntryState {
        protocol: BootProtocol::Pvh,
        regs: Regs {
            rip,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rbx: start_info,
            rflags: RFLAGS_RESET,
            ..Regs::default()
        },
        sregs: SRegs {
            cr0: X86_CR0_PE | X86_CR0_ET,
            ..flat_sregs(crate::gdt::CODE32_INDEX)
        },
        kernel_end: GuestAddress(kernel_end),
    }
}
