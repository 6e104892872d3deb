//! Identity page tables for the 64-bit entry: the first 1 GiB mapped with 2 MiB pages.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout::{IDENTITY_MAP_SIZE, PDE_START, PDPTE_START, PML4_START};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;
const HUGE_PAGE: u64 = 2 << 20;

/// Writes PML4 -> PDPT -> PD at their fixed addresses and returns the CR3 value.
pub fn write_identity_map<M: GuestMemoryBackend>(mem: &M) -> Result<u64, GuestMemoryError> {
    mem.write_obj(PDPTE_START | PRESENT | WRITABLE, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | PRESENT | WRITABLE, GuestAddress(PDPTE_START))?;
    let entries = IDENTITY_MAP_SIZE / HUGE_PAGE;
    let mut table = Vec::with_capacity(4096);
    for i in 0..entries {
        table.extend_from_slice(
            &((i * HUGE_PAGE) | PRESENT | WRITABLE | PAGE_SIZE_2M).to_le_bytes(),
        );
    }
    mem.write_slice(&table, GuestAddress(PDE_START))?;
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Walks the guest page tables like the MMU does for a 2 MiB mapping.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let addr_mask = 0x000f_ffff_ffff_f000u64;
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 0x1ff) * 8))
            .ok()?;
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & addr_mask) + ((va >> 30) & 0x1ff) * 8))
            .ok()?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & addr_mask) + ((va >> 21) & 0x1ff) * 8))
            .ok()?;
        if pde & PRESENT == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff))
    }

    #[test]
    fn first_gib_is_identity_mapped() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        assert_eq!(cr3, PML4_START);
        for va in [0u64, 0x7000, 0x10_0000, 0x1234_5678, IDENTITY_MAP_SIZE - 1] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, IDENTITY_MAP_SIZE), None);
    }
}
