//! The guest-physical memory map (see docs/architecture.md, "Memory map").
//!
//! Every address the boot code writes to, and every window the VMM must keep free of RAM, is a
//! constant here so the `vmm` crate and the boot code agree by construction.

use vm_memory::GuestAddress;

/// Global descriptor table: null, code32 (0x08, PVH), code64 (0x10), data (0x18), TSS (0x20).
pub const GDT_START: u64 = 0x500;
/// Number of 8-byte entries in the boot GDT.
pub const GDT_ENTRIES: usize = 5;
/// Interrupt descriptor table (empty, limit 0), right after the GDT.
pub const IDT_START: u64 = 0x528;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map table; it runs up to the zero page.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU (the stack grows down).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages) of the boot identity map.
pub const PDE_START: u64 = 0xb000;
/// Size of the identity map set up for the 64-bit entry (the first 1 GiB).
pub const IDENTITY_MAP_SIZE: u64 = 1 << 30;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Maximum size of the command line, including its terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Start of the reserved area below 1 MiB (EBDA, VGA hole, BIOS area).
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables (RSDP first, so the legacy scan of 0xe0000..0x100000 finds it).
pub const ACPI_START: u64 = 0xe_0000;
/// Size of the ACPI table area (up to 1 MiB).
pub const ACPI_SIZE: u64 = 0x2_0000;
/// First address of high memory: where a bzImage's protected-mode kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole: no RAM between here and [`MMIO_HOLE_END`].
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End (exclusive) of the 32-bit MMIO hole; RAM continues here when the guest has > 3 GiB.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// 32-bit PCI MMIO window for BARs.
pub const PCI_MMIO32_START: u64 = 0xC000_0000;
/// Size of the 32-bit PCI MMIO window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI ECAM window (reserved in the e820 map).
pub const ECAM_START: u64 = 0xE000_0000;
/// Size of the PCI ECAM window (256 buses).
pub const ECAM_SIZE: u64 = 0x1000_0000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xFEC0_0000;
/// LAPIC registers.
pub const LAPIC_START: u64 = 0xFEE0_0000;
/// Page size used for initrd alignment.
pub const PAGE_SIZE: u64 = 0x1000;

// The windows inside the hole are ordered and disjoint.
const _: () = assert!(ECAM_START >= PCI_MMIO32_START + PCI_MMIO32_SIZE);
const _: () = assert!(ECAM_START + ECAM_SIZE <= IOAPIC_START && IOAPIC_START < LAPIC_START);
const _: () = assert!(LAPIC_START < MMIO_HOLE_END && PCI_MMIO32_START >= MMIO_HOLE_START);

/// Guest RAM ranges for `mem_size` bytes of RAM: one range from 0 when it fits below the
/// 32-bit hole, else the part below [`MMIO_HOLE_START`] plus the rest from [`MMIO_HOLE_END`].
///
/// A size of 0 gives no range. Sizes are not rounded; the caller chooses page-multiple sizes.
pub fn guest_ram_ranges(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_HOLE_START);
    let high = mem_size.saturating_sub(MMIO_HOLE_START);
    let mut ranges = Vec::with_capacity(2);
    if low > 0 {
        ranges.push((GuestAddress(0), to_usize(low)));
    }
    if high > 0 {
        ranges.push((GuestAddress(MMIO_HOLE_END), to_usize(high)));
    }
    ranges
}

// thinvm is x86-64 only, where usize is 64 bits wide.
fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn total(r: &[(GuestAddress, usize)]) -> u64 {
        r.iter().map(|(_, len)| *len as u64).sum()
    }

    fn assert_no_hole_overlap(r: &[(GuestAddress, usize)]) {
        for (start, len) in r {
            let end = start.0 + *len as u64;
            assert!(end <= MMIO_HOLE_START || start.0 >= MMIO_HOLE_END, "{r:?}");
        }
    }

    #[test]
    fn small_guest_is_one_range() {
        let r = guest_ram_ranges(128 * MIB);
        assert_eq!(r, vec![(GuestAddress(0), (128 * MIB) as usize)]);
    }

    #[test]
    fn exactly_three_gib_stays_below_hole() {
        let r = guest_ram_ranges(3 * GIB);
        assert_eq!(r.len(), 1);
        assert_eq!(total(&r), 3 * GIB);
        assert_no_hole_overlap(&r);
    }

    #[test]
    fn large_guests_split_around_hole() {
        for size in [3 * GIB + GIB / 2, 5 * GIB] {
            let r = guest_ram_ranges(size);
            assert_eq!(r.len(), 2, "{size:#x}");
            assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START as usize));
            assert_eq!(r[1].0, GuestAddress(MMIO_HOLE_END));
            assert_eq!(total(&r), size);
            assert_no_hole_overlap(&r);
        }
    }

    #[test]
    fn zero_size_has_no_ranges() {
        assert!(guest_ram_ranges(0).is_empty());
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (GDT_START, GDT_ENTRIES as u64 * 8),
            (IDT_START, 8),
            (PVH_INFO_START, PVH_MODLIST_START - PVH_INFO_START),
            (PVH_MODLIST_START, PVH_MEMMAP_START - PVH_MODLIST_START),
            (PVH_MEMMAP_START, ZERO_PAGE_START - PVH_MEMMAP_START),
            (ZERO_PAGE_START, PAGE_SIZE),
            (BOOT_STACK_POINTER - 0x800, 0x800),
            (PML4_START, PAGE_SIZE),
            (PDPTE_START, PAGE_SIZE),
            (PDE_START, PAGE_SIZE),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (ACPI_START, ACPI_SIZE),
        ];
        for (i, a) in areas.iter().enumerate() {
            assert!(a.0 + a.1 <= HIMEM_START, "{a:x?} below 1 MiB");
            for b in &areas[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
    }
}
