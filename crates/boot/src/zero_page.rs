//! The Linux zero page (`boot_params`) for the 64-bit boot protocol.

use linux_loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::e820::E820Entry;
use crate::initrd::InitrdPlacement;
use crate::kernel::HDRS_MAGIC;
use crate::layout::{CMDLINE_START, ZERO_PAGE_START};

/// `type_of_loader` for a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// End of the setup heap, relative to the real-mode code (boot protocol: 0xfe00 typical).
pub const HEAP_END_PTR: u16 = 0xfe00;
/// Kernel alignment given to a vmlinux that has no setup header of its own.
pub const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// Why the zero page could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// The e820 table in the zero page has a fixed size.
    #[error("the e820 map has {count} entries, the zero page holds {max}")]
    TooManyE820Entries {
        /// Entries in the map.
        count: usize,
        /// Capacity of the zero page.
        max: usize,
    },
    /// Guest memory write failed.
    #[error("cannot write the zero page at {ZERO_PAGE_START:#x}: {0}")]
    Write(#[source] GuestMemoryError),
}

/// A setup header for a kernel that came without one (an ELF vmlinux).
pub fn synthetic_setup_header() -> setup_header {
    setup_header {
        boot_flag: 0xaa55,
        header: HDRS_MAGIC,
        kernel_alignment: ELF_KERNEL_ALIGNMENT,
        ..Default::default()
    }
}

/// Builds the zero page from the kernel's setup header and the boot facts.
pub fn build(
    mut hdr: setup_header,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
    rsdp: u64,
) -> Result<boot_params, ZeroPageError> {
    let mut params = boot_params::default();
    if e820.len() > params.e820_table.len() {
        return Err(ZeroPageError::TooManyE820Entries {
            count: e820.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.loadflags |= CAN_USE_HEAP;
    hdr.heap_end_ptr = HEAP_END_PTR;
    hdr.vid_mode = 0xffff; // "normal"
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    if let Some(i) = initrd {
        // The initrd lies below the 32-bit hole, so both fit 32 bits.
        hdr.ramdisk_image = u32::try_from(i.addr).unwrap_or(u32::MAX);
        hdr.ramdisk_size = u32::try_from(i.size).unwrap_or(u32::MAX);
    }
    params.hdr = hdr;
    let mut table = params.e820_table;
    for (slot, e) in table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.type_,
        };
    }
    params.e820_table = table;
    // Checked above: at most E820_MAX_ENTRIES_ZEROPAGE (128) entries.
    params.e820_entries = e820.len() as u8;
    params.acpi_rsdp_addr = rsdp;
    Ok(params)
}

/// Writes `params` at [`ZERO_PAGE_START`].
pub fn write<M: GuestMemoryBackend>(mem: &M, params: &boot_params) -> Result<(), ZeroPageError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(ZeroPageError::Write)
}
