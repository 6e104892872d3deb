//! Loading a Linux kernel into guest memory.
//!
//! [`load`] detects the kernel format, copies the kernel, initrd and command line, writes the
//! e820 map, ACPI tables, GDT and either the zero page plus identity page tables (bzImage, or
//! an ELF vmlinux without a PVH note: Linux 64-bit entry) or `hvm_start_info` (an ELF with the
//! Xen PVH note), and returns the boot vCPU's [`EntryState`]. No KVM here: the state is
//! hypervisor neutral. The memory map is in [`layout`] and docs/architecture.md.
//!
//! Guest memory is any `vm_memory::GuestMemoryBackend` (vm-memory 0.18's name for the
//! physical-memory trait that `GuestMemoryMmap` implements; linux-loader needs it).

pub mod acpi;
mod bzimage;
pub mod cmdline;
pub mod e820;
mod elf;
pub mod entry;
pub mod gdt;
pub mod initrd;
pub mod kernel;
pub mod layout;
pub mod paging;
pub mod pvh;
pub mod zero_page;

#[cfg(test)]
mod test_images;
#[cfg(test)]
mod tests;

use std::fs::File;

use vm_memory::{GuestMemoryBackend, GuestMemoryError};

pub use acpi::{create_acpi_tables, AcpiError, SLP_TYP_S5};
pub use cmdline::CmdlineError;
pub use e820::{E820Entry, E820Error};
pub use entry::{BootProtocol, DescriptorTable, EntryState, Regs, SRegs, Segment};
pub use initrd::InitrdError;
pub use kernel::KernelError;
pub use pvh::PvhError;
pub use zero_page::ZeroPageError;

use kernel::KernelEntry;
use layout::{HIMEM_START, MMIO_HOLE_START};

/// What to boot.
pub struct BootConfig<'a> {
    /// bzImage or ELF vmlinux.
    pub kernel: &'a mut File,
    /// Optional initrd / initramfs.
    pub initrd: Option<&'a mut File>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Number of vCPUs (one MADT Local APIC each).
    pub cpus: u8,
}

/// Why the guest could not be prepared; each variant names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the e820 map from the guest memory regions.
    #[error(transparent)]
    MemoryMap(#[from] E820Error),
    /// Detecting or loading the kernel.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Writing the command line.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// Loading the initrd.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// Writing the ACPI tables.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// Writing the zero page.
    #[error(transparent)]
    ZeroPage(#[from] ZeroPageError),
    /// Writing the PVH start info.
    #[error(transparent)]
    Pvh(#[from] PvhError),
    /// Writing the GDT or the page tables.
    #[error("cannot write the boot {what}: {source}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        source: GuestMemoryError,
    },
}

/// Highest initrd end for protocols without `initrd_addr_max` (PVH, vmlinux): the hole.
const DEFAULT_INITRD_LIMIT: u64 = MMIO_HOLE_START;

/// Loads everything the boot vCPU needs into `mem` and returns its entry state.
///
/// `mem` must hold RAM from 0 (the boot structures live below 1 MiB) and none in the 32-bit
/// hole; [`layout::guest_ram_ranges`] gives such a layout.
pub fn load<M: GuestMemoryBackend>(mem: &M, cfg: BootConfig) -> Result<EntryState, Error> {
    let e820 = e820::build_e820(mem)?;
    let ram_end = e820::ram_containing(&e820, HIMEM_START).map_or(0, |(_, end)| end);
    let kernel = kernel::load_kernel(mem, cfg.kernel, ram_end)?;
    tracing::debug!(start = kernel.start, end = kernel.end, "kernel loaded");

    let (cmdline_max, initrd_limit) = match &kernel.entry {
        KernelEntry::BzImage(hdr) => {
            let addr_max = u64::from(hdr.initrd_addr_max).saturating_add(1);
            (
                cmdline::max_len(hdr.cmdline_size),
                addr_max.min(DEFAULT_INITRD_LIMIT),
            )
        }
        _ => (cmdline::max_len(0), DEFAULT_INITRD_LIMIT),
    };
    cmdline::write_cmdline(mem, cfg.cmdline, cmdline_max)?;
    let initrd = match cfg.initrd {
        Some(file) => Some(initrd::load_initrd(
            mem,
            file,
            kernel.reserved_end,
            ram_end.min(initrd_limit),
        )?),
        None => None,
    };
    let rsdp = acpi::create_acpi_tables(mem, cfg.cpus)?.0;
    gdt::write_gdt_and_idt(mem).map_err(|source| Error::Write {
        what: "GDT",
        source,
    })?;

    let linux64 = |hdr, rip| -> Result<EntryState, Error> {
        let params = zero_page::build(hdr, initrd, &e820, rsdp)?;
        zero_page::write(mem, &params)?;
        let cr3 = paging::write_identity_map(mem).map_err(|source| Error::Write {
            what: "page tables",
            source,
        })?;
        Ok(entry::linux64(rip, cr3, kernel.end))
    };
    let state = match kernel.entry {
        KernelEntry::BzImage(hdr) => linux64(hdr, kernel.start + bzimage::ENTRY_64_OFFSET)?,
        KernelEntry::Elf64(rip) => linux64(zero_page::synthetic_setup_header(), rip)?,
        KernelEntry::Pvh(rip) => {
            let info = pvh::write_start_info(mem, initrd, &e820, rsdp)?;
            entry::pvh(rip, info, kernel.end)
        }
    };
    tracing::info!(
        protocol = ?state.protocol,
        rip = format_args!("{:#x}", state.regs.rip),
        initrd = ?initrd.map(|i| (i.addr, i.size)),
        "guest memory prepared for boot"
    );
    Ok(state)
}
