//! ACPI tables read back from guest memory and checked against the ACPI specification's
//! offsets (not against the acpi_tables structs).

use super::*;
use vm_memory::GuestMemoryMmap;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Reads a whole SDT at `addr`, checks signature, checksum and that it lies in the ACPI area.
fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    let header = read(mem, addr, 36);
    assert_eq!(&header[..4], signature);
    let len = u32_at(&header, 4) as usize;
    assert!(addr >= ACPI_START && addr + len as u64 <= ACPI_START + ACPI_SIZE);
    let t = read(mem, addr, len);
    assert_eq!(
        sum(&t),
        0,
        "checksum of {}",
        String::from_utf8_lossy(signature)
    );
    t
}

struct Tables {
    fadt: Vec<u8>,
    madt: Vec<u8>,
    mcfg: Vec<u8>,
    dsdt: Vec<u8>,
    facs_addr: u64,
}

fn tables(mem: &GuestMemoryMmap, cpus: u8) -> Tables {
    let rsdp_addr = create_acpi_tables(mem, cpus).unwrap().0;
    assert_eq!(rsdp_addr, ACPI_START);
    let rsdp = read(mem, rsdp_addr, 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!((sum(&rsdp[..20]), sum(&rsdp)), (0, 0));
    assert_eq!(u32_at(&rsdp, 20), 36);
    let xsdt = table(mem, u64_at(&rsdp, 24), b"XSDT");
    let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
    assert_eq!(entries.len(), 3);
    let fadt = table(mem, entries[0], b"FACP");
    let madt = table(mem, entries[1], b"APIC");
    let mcfg = table(mem, entries[2], b"MCFG");
    let dsdt = table(mem, u64_at(&fadt, 140), b"DSDT");
    let facs_addr = u64_at(&fadt, 132);
    Tables {
        fadt,
        madt,
        mcfg,
        dsdt,
        facs_addr,
    }
}

#[test]
fn fadt_describes_fixed_feature_hardware() {
    let mem = mem();
    let t = tables(&mem, 1);
    let f = &t.fadt;
    assert_eq!(f.len(), 276, "ACPI 6 FADT length");
    assert_eq!(u16_at(f, 46), 9, "SCI_INT");
    assert_eq!(u32_at(f, 48), 0, "no SMI_CMD");
    assert_eq!(u32_at(f, 56), 0x600, "PM1a_EVT_BLK");
    assert_eq!(u32_at(f, 64), 0x604, "PM1a_CNT_BLK");
    assert_eq!(u32_at(f, 76), 0, "no PM timer");
    assert_eq!(
        (f[88], f[89], f[91]),
        (4, 2, 0),
        "PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN"
    );
    let boot_arch = u16_at(f, 109);
    assert_ne!(boot_arch & (1 << 1), 0, "8042 present");
    assert_eq!(boot_arch & (1 << 5), 0, "CMOS RTC present");
    let flags = u32_at(f, 112);
    assert_eq!(flags & (1 << 4), 0, "fixed power button");
    assert_ne!(flags & (1 << 5), 0, "no fixed sleep button");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED_ACPI");
    // RESET_REG: GAS SystemIO, 8 bits, port 0x608; RESET_VALUE 6.
    assert_eq!(&f[116..120], &[1, 8, 0, 1]);
    assert_eq!((u64_at(f, 120), f[128]), (0x608, 6));
    // X_PM1a_EVT_BLK / X_PM1a_CNT_BLK: SystemIO GAS matching the 32-bit blocks.
    assert_eq!((f[148], f[149], u64_at(f, 152)), (1, 32, 0x600));
    assert_eq!((f[172], f[173], u64_at(f, 176)), (1, 16, 0x604));
    let facs = read(&mem, t.facs_addr, 64);
    assert_eq!(&facs[..4], b"FACS");
    assert_eq!(u32_at(&facs, 4), 64);
    assert_eq!(t.facs_addr % 64, 0, "FACS is 64-byte aligned");
}

fn madt_entries(madt: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut off = 44;
    while off < madt.len() {
        let len = usize::from(madt[off + 1]);
        assert!(len >= 2 && off + len <= madt.len());
        out.push(&madt[off..off + len]);
        off += len;
    }
    out
}

#[test]
fn madt_has_one_enabled_lapic_per_cpu_and_the_ioapic() {
    let mem = mem();
    for cpus in [1u8, 4, MAX_CPUS] {
        let t = tables(&mem, cpus);
        assert_eq!(u32_at(&t.madt, 36), 0xfee0_0000);
        let entries = madt_entries(&t.madt);
        let lapics: Vec<_> = entries.iter().filter(|e| e[0] == 0).collect();
        assert_eq!(lapics.len(), usize::from(cpus));
        for (i, l) in lapics.iter().enumerate() {
            assert_eq!(
                (l[1], usize::from(l[3]), u32_at(l, 4)),
                (8, i, 1),
                "APIC ID = index, enabled"
            );
        }
        let ioapics: Vec<_> = entries.iter().filter(|e| e[0] == 1).collect();
        assert_eq!(ioapics.len(), 1);
        assert_eq!(
            (ioapics[0][2], u32_at(ioapics[0], 4), u32_at(ioapics[0], 8)),
            (0, 0xfec0_0000, 0)
        );
        let overrides: Vec<(u8, u32, u16)> = entries
            .iter()
            .filter(|e| e[0] == 2)
            .map(|e| (e[3], u32_at(e, 4), u16_at(e, 8)))
            .collect();
        assert_eq!(overrides, vec![(9, 9, 0b1101)]);
    }
}

#[test]
fn dsdt_has_s5_and_pvpanic() {
    let mem = mem();
    let t = tables(&mem, 2);
    let aml = &t.dsdt[36..];
    let find = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
    // NameOp "_S5_" PackageOp len=6 NumElements=4 {BytePrefix 5, BytePrefix 5, Zero, Zero}
    assert!(find(&[
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 5, 0x0a, 5, 0, 0
    ]));
    assert!(find(b"PEVT"));
    assert!(find(b"\x0dQEMU0001\x00"), "_HID string");
    // IO port descriptor: decode16, min = max = 0x505, alignment 1, length 1.
    assert!(find(&[0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01]));
    // Memory32Fixed reserving the ECAM window.
    assert!(find(&[
        0x86, 0x09, 0x00, 0x00, 0, 0, 0, 0xe0, 0, 0, 0, 0x10
    ]));
}

#[test]
fn mcfg_points_at_the_ecam_window() {
    let mem = mem();
    let t = tables(&mem, 1);
    let m = &t.mcfg;
    assert_eq!(m.len(), 44 + 16, "header, reserved, one allocation");
    assert_eq!(u64_at(m, 44), ECAM_START);
    assert_eq!(u16_at(m, 52), 0, "segment 0");
    assert_eq!(
        (m[54], m[55]),
        (0, 0),
        "bus 0 only: Linux probes every bus MCFG names"
    );
    assert!(
        (u64::from(m[55]) + 1) << 20 <= ECAM_SIZE,
        "inside the reserved window"
    );
}

#[test]
fn dsdt_describes_the_pci_host_bridge() {
    let mem = mem();
    let t = tables(&mem, 1);
    let aml = &t.dsdt[36..];
    let find = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
    assert!(find(b"PCI0"));
    // _HID EISAID("PNP0A08") = 0x080ad041, _CID EISAID("PNP0A03") = 0x030ad041 (DWordPrefix).
    assert!(find(&[
        b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x08
    ]));
    assert!(find(&[
        b'_', b'C', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03
    ]));
    // WordBusNumber: descriptor 0x88, length 13, type 2 (bus), ..., min 0, max 0.
    assert!(find(&[0x88, 0x0d, 0x00, 0x02]));
    // IO 0xcf8, length 8.
    assert!(find(&[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]));
    // DWordMemory: descriptor 0x87, type 0 (memory), min 0xC0000000, max 0xDFFFFFFF.
    let dword_mem = aml
        .windows(26)
        .find(|w| w[0] == 0x87 && w[3] == 0)
        .expect("a DWordMemory descriptor");
    assert_eq!(u32_at(dword_mem, 10), 0xc000_0000);
    assert_eq!(u32_at(dword_mem, 14), 0xdfff_ffff);
    assert_eq!(u32_at(dword_mem, 22), 0x2000_0000, "length");
}

#[test]
fn bad_cpu_counts_are_refused() {
    let mem = mem();
    assert!(matches!(
        create_acpi_tables(&mem, 0),
        Err(AcpiError::BadCpuCount { cpus: 0 })
    ));
    assert!(matches!(
        create_acpi_tables(&mem, 255),
        Err(AcpiError::BadCpuCount { cpus: 255 })
    ));
}

#[test]
fn memory_without_the_acpi_area_is_an_error() {
    let small: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
    assert!(matches!(
        create_acpi_tables(&small, 1),
        Err(AcpiError::Write { .. })
    ));
}
