//! The boot GDT: one table, written to guest memory and turned into the segment registers, so
//! the two cannot disagree.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::entry::{DescriptorTable, Segment};
use crate::layout::{GDT_ENTRIES, GDT_START, IDT_START};

/// Index of the flat 32-bit code segment (PVH entry), selector 0x08.
pub const CODE32_INDEX: usize = 1;
/// Index of the 64-bit code segment (Linux `__BOOT_CS`), selector 0x10.
pub const CODE64_INDEX: usize = 2;
/// Index of the flat data segment (Linux `__BOOT_DS`), selector 0x18.
pub const DATA_INDEX: usize = 3;
/// Index of the TSS descriptor, selector 0x20.
pub const TSS_INDEX: usize = 4;

/// Builds a legacy 8-byte segment descriptor.
///
/// `access` is the access byte (P, DPL, S, type), `flags` the nibble G, D/B, L, AVL.
pub const fn descriptor(access: u8, flags: u8, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags as u64) & 0xf) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// The boot GDT: null, code32, code64, data, TSS.
pub const BOOT_GDT: [u64; GDT_ENTRIES] = [
    0,
    descriptor(0x9b, 0xc, 0, 0xf_ffff), // present, ring 0, code exec/read accessed; G, D
    descriptor(0x9b, 0xa, 0, 0xf_ffff), // same, G, L
    descriptor(0x93, 0xc, 0, 0xf_ffff), // present, ring 0, data read/write accessed; G, B
    descriptor(0x8b, 0x0, 0, 0x67),     // present, busy TSS, byte granular
];

/// Decodes GDT entry `index` of `table` into the register form the hypervisor loads.
///
/// An index past the table gives an unusable null segment.
pub fn segment_from_gdt(table: &[u64], index: usize) -> Segment {
    let Some(&d) = table.get(index) else {
        return Segment {
            unusable: 1,
            ..Segment::default()
        };
    };
    let bit = |shift: u32| ((d >> shift) & 1) as u8;
    let g = bit(55);
    let raw_limit = ((d & 0xffff) | (((d >> 48) & 0xf) << 16)) as u32;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    Segment {
        base: ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24),
        limit,
        // GDT_ENTRIES is tiny, so index * 8 fits a u16.
        selector: (index * 8) as u16,
        type_: ((d >> 40) & 0xf) as u8,
        present,
        dpl: ((d >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
    }
}

/// GDTR value for [`BOOT_GDT`] at [`GDT_START`].
pub fn gdt_register() -> DescriptorTable {
    DescriptorTable {
        base: GDT_START,
        limit: (GDT_ENTRIES * 8 - 1) as u16,
    }
}

/// IDTR value: an empty IDT at [`IDT_START`].
pub fn idt_register() -> DescriptorTable {
    DescriptorTable {
        base: IDT_START,
        limit: 0,
    }
}

/// An unusable LDT register.
pub fn null_ldt() -> Segment {
    Segment {
        type_: 0x2,
        unusable: 1,
        ..Segment::default()
    }
}

/// Writes [`BOOT_GDT`] at [`GDT_START`] and a zeroed IDT entry at [`IDT_START`].
pub fn write_gdt_and_idt<M: GuestMemoryBackend>(mem: &M) -> Result<(), GuestMemoryError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + (i as u64) * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn descriptors_match_known_encodings() {
        // Well-known flat descriptors from the Intel SDM examples.
        assert_eq!(BOOT_GDT[CODE64_INDEX], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[CODE32_INDEX], 0x00cf_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[DATA_INDEX], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn decoded_segments_have_expected_fields() {
        let cs64 = segment_from_gdt(&BOOT_GDT, CODE64_INDEX);
        assert_eq!(
            (cs64.selector, cs64.l, cs64.db, cs64.type_),
            (0x10, 1, 0, 0xb)
        );
        assert_eq!(
            (cs64.limit, cs64.g, cs64.s, cs64.present),
            (0xffff_ffff, 1, 1, 1)
        );
        let cs32 = segment_from_gdt(&BOOT_GDT, CODE32_INDEX);
        assert_eq!((cs32.selector, cs32.l, cs32.db), (0x08, 0, 1));
        let ds = segment_from_gdt(&BOOT_GDT, DATA_INDEX);
        assert_eq!(
            (ds.selector, ds.type_, ds.db, ds.unusable),
            (0x18, 0x3, 1, 0)
        );
        let tr = segment_from_gdt(&BOOT_GDT, TSS_INDEX);
        assert_eq!(
            (tr.selector, tr.type_, tr.s, tr.limit, tr.g),
            (0x20, 0xb, 0, 0x67, 0)
        );
        let null = segment_from_gdt(&BOOT_GDT, 0);
        assert_eq!(null.unusable, 1);
        assert_eq!(segment_from_gdt(&BOOT_GDT, 99).unusable, 1);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let d = descriptor(0x93, 0x4, 0x1234_5678, 0xa_bcde);
        let s = segment_from_gdt(&[d], 0);
        assert_eq!((s.base, s.limit, s.g, s.db), (0x1234_5678, 0xa_bcde, 0, 1));
    }

    #[test]
    fn gdt_in_memory_matches_table() {
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)])
            .expect("64 KiB of test memory");
        write_gdt_and_idt(&mem).unwrap();
        let gdtr = gdt_register();
        let mut back = Vec::new();
        for i in 0..=(u64::from(gdtr.limit) / 8) {
            back.push(
                mem.read_obj::<u64>(GuestAddress(gdtr.base + i * 8))
                    .unwrap(),
            );
        }
        assert_eq!(back, BOOT_GDT);
        for i in 0..GDT_ENTRIES {
            assert_eq!(segment_from_gdt(&back, i), segment_from_gdt(&BOOT_GDT, i));
        }
    }
}
