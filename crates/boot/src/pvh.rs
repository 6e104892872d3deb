//! PVH boot: `hvm_start_info`, its module list (the initrd) and memory map table.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::e820::E820Entry;
use crate::initrd::InitrdPlacement;
use crate::layout::{
    CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};

/// Version of `hvm_start_info` written (1: has the memory map fields).
pub const START_INFO_VERSION: u32 = 1;
/// Room for memory map entries between [`PVH_MEMMAP_START`] and the zero page.
pub const MAX_MEMMAP_ENTRIES: usize =
    (ZERO_PAGE_START - PVH_MEMMAP_START) as usize / std::mem::size_of::<hvm_memmap_table_entry>();

/// Why the PVH structures could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// The memory map table does not fit its area.
    #[error("the memory map has {count} entries, the PVH area holds {max}")]
    TooManyMemmapEntries {
        /// Entries in the map.
        count: usize,
        /// Capacity.
        max: usize,
    },
    /// Guest memory write failed.
    #[error("cannot write the PVH {what} at {addr:#x}: {source}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Its address.
        addr: u64,
        /// The memory error.
        source: GuestMemoryError,
    },
}

/// Writes the start info, module list and memory map; returns the start info address.
pub fn write_start_info<M: GuestMemoryBackend>(
    mem: &M,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
    rsdp: u64,
) -> Result<u64, PvhError> {
    if e820.len() > MAX_MEMMAP_ENTRIES {
        return Err(PvhError::TooManyMemmapEntries {
            count: e820.len(),
            max: MAX_MEMMAP_ENTRIES,
        });
    }
    let write_err = |what, addr| move |source| PvhError::Write { what, addr, source };
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, e) in e820.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.type_,
            reserved: 0,
        };
        let addr = PVH_MEMMAP_START + i as u64 * entry_size;
        mem.write_obj(entry, GuestAddress(addr))
            .map_err(write_err("memory map", addr))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp,
        memmap_paddr: PVH_MEMMAP_START,
        // Checked above: at most MAX_MEMMAP_ENTRIES.
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some(i) = initrd {
        let module = hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))
            .map_err(write_err("module list", PVH_MODLIST_START))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(write_err("start info", PVH_INFO_START))?;
    Ok(PVH_INFO_START)
}
