//! Hypervisor-neutral x86-64 CPU state: what `boot` computes for the boot vCPU and what
//! `hypervisor` loads into it. Plain data, no dependencies, so neither side names the other.

/// General purpose registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rip: u64,
    /// Flags: bit 1 is reserved and reads as 1 (0x2).
    pub rflags: u64,
}

/// A segment register with its hidden part, as the hypervisor loads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by the granularity bit).
    pub limit: u32,
    /// Selector (GDT index * 8).
    pub selector: u16,
    /// Descriptor type field (4 bits).
    pub type_: u8,
    /// Present bit.
    pub present: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size (1 = 32-bit).
    pub db: u8,
    /// Descriptor type (1 = code/data, 0 = system).
    pub s: u8,
    /// 64-bit code segment.
    pub l: u8,
    /// Granularity (1 = limit in 4 KiB units in the descriptor).
    pub g: u8,
    /// Available for software.
    pub avl: u8,
    /// The segment is unusable (null selector or not present).
    pub unusable: u8,
}

/// GDTR / IDTR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    /// Guest-physical base of the table.
    pub base: u64,
    /// Size of the table in bytes, minus one.
    pub limit: u16,
}

/// Special registers the boot vCPU starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SRegs {
    /// Code segment.
    pub cs: Segment,
    /// Data segment.
    pub ds: Segment,
    /// Extra segment.
    pub es: Segment,
    /// FS.
    pub fs: Segment,
    /// GS.
    pub gs: Segment,
    /// Stack segment.
    pub ss: Segment,
    /// Task register.
    pub tr: Segment,
    /// Local descriptor table register (unusable).
    pub ldt: Segment,
    /// GDTR.
    pub gdt: DescriptorTable,
    /// IDTR.
    pub idt: DescriptorTable,
    /// CR0.
    pub cr0: u64,
    /// CR3 (PML4 address with the 64-bit entry, 0 otherwise).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER MSR.
    pub efer: u64,
}
