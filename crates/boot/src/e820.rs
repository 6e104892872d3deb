//! The guest's e820 memory map, derived from the guest memory regions.
//!
//! RAM is what the regions hold, minus the legacy area 0x9fc00..0x100000; the only reserved
//! ranges are that legacy area and the PCI ECAM window. Nothing else inside the 32-bit hole is
//! listed (the LAPIC/IOAPIC/BAR windows are found by other means).

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{
    EBDA_START, ECAM_SIZE, ECAM_START, HIMEM_START, MMIO_HOLE_END, MMIO_HOLE_START,
};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One entry of the e820 map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub type_: u32,
}

impl E820Entry {
    /// End address (exclusive); entries are built with checked arithmetic so this cannot wrap.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// Why the e820 map could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum E820Error {
    /// A guest memory region lies (partly) in the 32-bit MMIO hole.
    #[error("guest RAM {start:#x}..{end:#x} overlaps the MMIO hole {MMIO_HOLE_START:#x}..{MMIO_HOLE_END:#x}")]
    RamInMmioHole {
        /// Region start.
        start: u64,
        /// Region end (exclusive).
        end: u64,
    },
    /// A region's end does not fit in 64 bits.
    #[error("guest RAM region at {start:#x} with length {len:#x} overflows the address space")]
    RegionOverflow {
        /// Region start.
        start: u64,
        /// Region length.
        len: u64,
    },
}

/// Builds the sorted, non-overlapping e820 map for `mem`.
pub fn build_e820<M: GuestMemoryBackend>(mem: &M) -> Result<Vec<E820Entry>, E820Error> {
    let mut map = vec![
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            type_: E820_RESERVED,
        },
        E820Entry {
            addr: ECAM_START,
            size: ECAM_SIZE,
            type_: E820_RESERVED,
        },
    ];
    for region in mem.iter() {
        let start = region.start_addr().0;
        let len = region.len();
        let end = start
            .checked_add(len)
            .ok_or(E820Error::RegionOverflow { start, len })?;
        if start < MMIO_HOLE_END && end > MMIO_HOLE_START {
            return Err(E820Error::RamInMmioHole { start, end });
        }
        // RAM minus the legacy reserved area [EBDA_START, HIMEM_START).
        for (s, e) in [(start, end.min(EBDA_START)), (start.max(HIMEM_START), end)] {
            if s < e {
                map.push(E820Entry {
                    addr: s,
                    size: e - s,
                    type_: E820_RAM,
                });
            }
        }
    }
    map.sort_by_key(|e| e.addr);
    Ok(merge_adjacent(map))
}

fn merge_adjacent(map: Vec<E820Entry>) -> Vec<E820Entry> {
    let mut out: Vec<E820Entry> = Vec::with_capacity(map.len());
    for e in map {
        match out.last_mut() {
            Some(last) if last.type_ == e.type_ && last.end() == e.addr => last.size += e.size,
            _ => out.push(e),
        }
    }
    out
}

/// The RAM entry of `map` that contains `addr`, as `(start, end)`.
pub fn ram_containing(map: &[E820Entry], addr: u64) -> Option<(u64, u64)> {
    map.iter()
        .find(|e| e.type_ == E820_RAM && e.addr <= addr && addr < e.end())
        .map(|e| (e.addr, e.end()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::guest_ram_ranges;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn check_invariants(map: &[E820Entry]) {
        for w in map.windows(2) {
            assert!(w[0].end() <= w[1].addr, "sorted, no overlap: {map:x?}");
        }
        for e in map {
            assert!(e.size > 0);
            let in_hole = e.addr < MMIO_HOLE_END && e.end() > MMIO_HOLE_START;
            if in_hole {
                assert_eq!(
                    (e.addr, e.size, e.type_),
                    (ECAM_START, ECAM_SIZE, E820_RESERVED)
                );
            }
            if e.type_ == E820_RAM {
                assert!(e.end() <= EBDA_START || e.addr >= HIMEM_START, "{e:x?}");
            }
        }
    }

    fn ram_total(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.type_ == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn maps_for_typical_sizes() {
        // Memory is reserved lazily by mmap, so even 5 GiB is cheap to map here.
        for size in [128 * MIB, 3 * GIB + GIB / 2, 5 * GIB] {
            let mem: GuestMemoryMmap =
                GuestMemoryMmap::from_ranges(&guest_ram_ranges(size)).unwrap();
            let map = build_e820(&mem).unwrap();
            check_invariants(&map);
            assert_eq!(
                ram_total(&map),
                size - (HIMEM_START - EBDA_START),
                "{size:#x}"
            );
            assert_eq!(
                map[0],
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    type_: E820_RAM
                }
            );
            let high = map.iter().find(|e| e.addr == MMIO_HOLE_END);
            assert_eq!(high.is_some(), size > MMIO_HOLE_START, "{map:x?}");
            let low = ram_containing(&map, HIMEM_START).unwrap();
            assert_eq!(low, (HIMEM_START, size.min(MMIO_HOLE_START)));
        }
    }

    #[test]
    fn adjacent_regions_are_merged() {
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), (2 * MIB) as usize),
            (GuestAddress(2 * MIB), (2 * MIB) as usize),
        ])
        .unwrap();
        let map = build_e820(&mem).unwrap();
        check_invariants(&map);
        assert_eq!(
            ram_containing(&map, HIMEM_START),
            Some((HIMEM_START, 4 * MIB))
        );
    }

    #[test]
    fn ram_in_hole_is_refused() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (3 * GIB + MIB) as usize)]).unwrap();
        assert_eq!(
            build_e820(&mem),
            Err(E820Error::RamInMmioHole {
                start: 0,
                end: 3 * GIB + MIB
            })
        );
    }
}
