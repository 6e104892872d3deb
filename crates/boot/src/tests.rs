//! End-to-end tests of [`crate::load`] on hand-built images (no KVM).

use linux_loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::e820::build_e820;
use crate::entry::*;
use crate::gdt::segment_from_gdt;
use crate::layout::*;
use crate::test_images::*;
use crate::{load, BootConfig, BootProtocol, EntryState, Error};

const MIB: u64 = 1 << 20;

fn guest(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&guest_ram_ranges(size)).expect("guest memory")
}

fn boot(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<EntryState, Error> {
    let mut k = file_with(kernel);
    let mut i = initrd.map(file_with);
    load(
        mem,
        BootConfig {
            kernel: &mut k,
            initrd: i.as_mut(),
            cmdline,
            cpus: 2,
        },
    )
}

fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// The segment registers must equal what the CPU would load from the GDT in guest memory.
fn assert_segments_match_guest_gdt(mem: &GuestMemoryMmap, s: &SRegs) {
    let count = (usize::from(s.gdt.limit) + 1) / 8;
    let gdt: Vec<u64> = (0..count)
        .map(|i| {
            mem.read_obj(GuestAddress(s.gdt.base + 8 * i as u64))
                .unwrap()
        })
        .collect();
    for seg in [s.cs, s.ds, s.es, s.fs, s.gs, s.ss, s.tr] {
        assert_eq!(seg, segment_from_gdt(&gdt, usize::from(seg.selector / 8)));
    }
    assert_eq!(s.idt.base, IDT_START);
}

fn read_cmdline(mem: &GuestMemoryMmap) -> Vec<u8> {
    let raw = read_bytes(mem, CMDLINE_START, CMDLINE_MAX_SIZE);
    raw[..raw.iter().position(|&b| b == 0).expect("NUL-terminated")].to_vec()
}

#[test]
fn bzimage_boots_by_the_64_bit_protocol() {
    let mem = guest(128 * MIB);
    let spec = BzSpec::default();
    let image = bzimage(&spec);
    let initrd = pattern(10_000, 7);
    let cmdline = "console=ttyS0 reboot=k panic=-1";
    let st = boot(&mem, &image, Some(&initrd), cmdline).unwrap();

    assert_eq!(st.protocol, BootProtocol::Linux64);
    assert_eq!(st.regs.rip, HIMEM_START + 0x200);
    assert_eq!(
        (st.regs.rsi, st.regs.rsp, st.regs.rbp),
        (ZERO_PAGE_START, BOOT_STACK_POINTER, BOOT_STACK_POINTER)
    );
    assert_eq!(st.regs.rflags, 0x2);
    let s = st.sregs;
    assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
    assert_eq!(
        (s.cr3, s.cr4 & X86_CR4_PAE, s.efer),
        (PML4_START, X86_CR4_PAE, EFER_LME | EFER_LMA)
    );
    assert_eq!(
        (s.cs.l, s.cs.db, s.cs.selector, s.ds.selector),
        (1, 0, 0x10, 0x18)
    );
    assert_segments_match_guest_gdt(&mem, &s);

    let setup_len = (usize::from(spec.setup_sects) + 1) * 512;
    assert_eq!(
        read_bytes(&mem, HIMEM_START, spec.payload_len),
        image[setup_len..]
    );
    assert_eq!(
        st.kernel_end,
        GuestAddress(HIMEM_START + spec.payload_len as u64)
    );
    assert_eq!(read_cmdline(&mem), cmdline.as_bytes());

    let zp = ZERO_PAGE_START;
    // Raw offsets from the boot protocol, independent of the struct definition.
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(zp + 0x202)).unwrap(),
        0x5372_6448
    );
    assert_eq!(
        mem.read_obj::<u16>(GuestAddress(zp + 0x206)).unwrap(),
        spec.version
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(zp + 0x210)).unwrap(), 0xff);
    let loadflags = mem.read_obj::<u8>(GuestAddress(zp + 0x211)).unwrap();
    assert_eq!(loadflags & 0x81, 0x81, "LOADED_HIGH | CAN_USE_HEAP");
    assert_eq!(
        mem.read_obj::<u16>(GuestAddress(zp + 0x224)).unwrap(),
        0xfe00
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(zp + 0x228)).unwrap(),
        CMDLINE_START as u32
    );
    assert_eq!(
        mem.read_obj::<u64>(GuestAddress(zp + 0x70)).unwrap(),
        ACPI_START
    );
    assert_eq!(read_bytes(&mem, ACPI_START, 8), b"RSD PTR ");

    let image_addr = u64::from(mem.read_obj::<u32>(GuestAddress(zp + 0x218)).unwrap());
    let image_size = u64::from(mem.read_obj::<u32>(GuestAddress(zp + 0x21c)).unwrap());
    assert_eq!(image_size, initrd.len() as u64);
    assert_eq!(image_addr % PAGE_SIZE, 0);
    assert!(
        image_addr + image_size <= 128 * MIB && image_addr + image_size + PAGE_SIZE > 128 * MIB
    );
    assert_eq!(read_bytes(&mem, image_addr, initrd.len()), initrd);

    let e820 = build_e820(&mem).unwrap();
    let count = usize::from(mem.read_obj::<u8>(GuestAddress(zp + 0x1e8)).unwrap());
    assert_eq!(count, e820.len());
    for (i, e) in e820.iter().enumerate() {
        let at = zp + 0x2d0 + 20 * i as u64;
        let got: (u64, u64, u32) = (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 8)).unwrap(),
            mem.read_obj(GuestAddress(at + 16)).unwrap(),
        );
        assert_eq!(got, (e.addr, e.size, e.type_));
    }
    let params: boot_params = mem.read_obj(GuestAddress(zp)).unwrap();
    assert_eq!({ params.hdr.initrd_addr_max }, spec.initrd_addr_max);
}

#[test]
fn setup_header_is_copied_only_up_to_its_end() {
    let mem = guest(64 * MIB);
    // Protocol 2.12: the header ends at 0x268; what follows in the file is setup code.
    let spec = BzSpec {
        version: 0x020c,
        header_end: 0x268,
        ..BzSpec::default()
    };
    let mut image = bzimage(&spec);
    image[0x268..0x26c].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    boot(&mem, &image, None, "").unwrap();
    let zp = ZERO_PAGE_START;
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(zp + 0x260)).unwrap(),
        spec.init_size
    );
    assert_eq!(mem.read_obj::<u32>(GuestAddress(zp + 0x268)).unwrap(), 0);
    // A jump that ends the header before the version field leaves no usable header.
    let short = bzimage(&BzSpec {
        header_end: 0x204,
        ..BzSpec::default()
    });
    assert!(matches!(
        boot(&mem, &short, None, ""),
        Err(Error::Kernel(crate::KernelError::BzImageTooOld {
            version: 0
        }))
    ));
}

#[test]
fn elf_with_pvh_note_boots_by_pvh() {
    let mem = guest(64 * MIB);
    let spec = ElfSpec {
        pvh_entry: Some(0x100_0040),
        ..ElfSpec::default()
    };
    // Dirty the bss first: the loader must clear it.
    let bss = spec.paddr + spec.payload.len() as u64;
    mem.write_slice(&[0xee; 0x100], GuestAddress(bss)).unwrap();
    let initrd = pattern(5000, 3);
    let st = boot(&mem, &elf(&spec), Some(&initrd), "console=ttyS0").unwrap();

    assert_eq!(st.protocol, BootProtocol::Pvh);
    assert_eq!(
        (st.regs.rip, st.regs.rbx, st.regs.rflags),
        (0x100_0040, PVH_INFO_START, 0x2)
    );
    let s = st.sregs;
    assert_eq!((s.cr0, s.cr4, s.efer), (X86_CR0_PE | X86_CR0_ET, 0, 0));
    assert_eq!(
        (s.cs.l, s.cs.db, s.cs.base, s.cs.limit),
        (0, 1, 0, 0xffff_ffff)
    );
    assert_eq!((s.ds.base, s.ds.limit, s.ds.db), (0, 0xffff_ffff, 1));
    assert_segments_match_guest_gdt(&mem, &s);
    assert_eq!(st.kernel_end, GuestAddress(spec.paddr + spec.memsz));
    assert_eq!(
        read_bytes(&mem, spec.paddr, spec.payload.len()),
        spec.payload
    );
    assert_eq!(read_bytes(&mem, bss, 0x100), vec![0u8; 0x100]);

    let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!((info.magic, info.version), (0x336e_c578, 1));
    assert_eq!(
        (info.cmdline_paddr, info.rsdp_paddr),
        (CMDLINE_START, ACPI_START)
    );
    assert_eq!(read_cmdline(&mem), b"console=ttyS0");
    assert_eq!(info.nr_modules, 1);
    let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    assert_eq!(module.size, initrd.len() as u64);
    assert_eq!(module.paddr % PAGE_SIZE, 0);
    assert_eq!(read_bytes(&mem, module.paddr, initrd.len()), initrd);
    let e820 = build_e820(&mem).unwrap();
    assert_eq!(info.memmap_entries as usize, e820.len());
    for (i, e) in e820.iter().enumerate() {
        let m: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 24 * i as u64))
            .unwrap();
        assert_eq!((m.addr, m.size, m.type_), (e.addr, e.size, e.type_));
    }
}

#[test]
fn elf_without_pvh_note_boots_by_the_64_bit_protocol() {
    let mem = guest(64 * MIB);
    let spec = ElfSpec {
        entry: 0x100_0200,
        ..ElfSpec::default()
    };
    let st = boot(&mem, &elf(&spec), None, "quiet").unwrap();
    assert_eq!(st.protocol, BootProtocol::Linux64);
    assert_eq!((st.regs.rip, st.regs.rsi), (0x100_0200, ZERO_PAGE_START));
    assert_eq!(st.sregs.cs.l, 1);
    let zp = ZERO_PAGE_START;
    assert_eq!(
        mem.read_obj::<u16>(GuestAddress(zp + 0x1fe)).unwrap(),
        0xaa55
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(zp + 0x202)).unwrap(),
        0x5372_6448
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(zp + 0x228)).unwrap(),
        CMDLINE_START as u32
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(zp + 0x21c)).unwrap(),
        0,
        "no initrd"
    );
}

#[test]
fn initrd_stays_below_the_hole_and_initrd_addr_max() {
    // 3.5 GiB: low RAM ends at the hole (3 GiB); the kernel allows up to 2 GiB.
    let mem = guest(3584 * MIB);
    let initrd = pattern(3 * PAGE_SIZE as usize + 17, 9);
    boot(&mem, &bzimage(&BzSpec::default()), Some(&initrd), "").unwrap();
    let addr = u64::from(
        mem.read_obj::<u32>(GuestAddress(ZERO_PAGE_START + 0x218))
            .unwrap(),
    );
    assert_eq!(addr % PAGE_SIZE, 0);
    assert!(addr + initrd.len() as u64 <= 0x8000_0000, "{addr:#x}");
    assert!(
        addr + initrd.len() as u64 + PAGE_SIZE > 0x8000_0000,
        "{addr:#x}"
    );

    // An ELF (PVH) kernel has no initrd_addr_max: the top of RAM below the hole.
    let spec = ElfSpec {
        pvh_entry: Some(0x100_0000),
        ..ElfSpec::default()
    };
    boot(&mem, &elf(&spec), Some(&initrd), "").unwrap();
    let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
    assert!(module.paddr + module.size <= MMIO_HOLE_START);
    assert!(module.paddr + module.size + PAGE_SIZE > MMIO_HOLE_START);
}

#[test]
fn five_gib_guest_boots_with_high_ram_in_the_map() {
    let mem = guest(5 << 30);
    let st = boot(&mem, &bzimage(&BzSpec::default()), None, "").unwrap();
    assert_eq!(st.protocol, BootProtocol::Linux64);
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    let table = params.e820_table;
    let entries = &table[..usize::from(params.e820_entries)];
    let high = entries
        .iter()
        .find(|e| { e.addr } == MMIO_HOLE_END)
        .expect("RAM above 4 GiB");
    assert_eq!(({ high.size }, { high.r#type }), (2 << 30, 1));
}

#[path = "tests_bad_input.rs"]
mod bad_input;

/// Loads real kernels named by `THINVM_TEST_BZIMAGE` / `THINVM_TEST_VMLINUX` (e.g. Debian's
/// cloud kernel and the vmlinux cut from it). Run with `cargo test -p boot -- --ignored`.
#[test]
#[ignore = "needs real kernel files named by environment variables"]
fn real_kernels_from_env() {
    let mem = guest(256 * MIB);
    let path = std::env::var("THINVM_TEST_BZIMAGE").expect("THINVM_TEST_BZIMAGE");
    let image = std::fs::read(path).unwrap();
    let st = boot(&mem, &image, Some(&pattern(1 << 20, 5)), "console=ttyS0").unwrap();
    assert_eq!(st.protocol, BootProtocol::Linux64);
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    let hdr = params.hdr;
    eprintln!(
        "bzImage: protocol {:#x}, init_size {:#x}, pref_address {:#x}, initrd at {:#x}, kernel end {:#x}",
        { hdr.version }, { hdr.init_size }, { hdr.pref_address }, { hdr.ramdisk_image }, st.kernel_end.0
    );
    let path = std::env::var("THINVM_TEST_VMLINUX").expect("THINVM_TEST_VMLINUX");
    let image = std::fs::read(path).unwrap();
    let st = boot(&mem, &image, None, "console=ttyS0").unwrap();
    assert_eq!(st.protocol, BootProtocol::Pvh);
    eprintln!(
        "vmlinux: PVH entry {:#x}, kernel end {:#x}",
        st.regs.rip, st.kernel_end.0
    );
}
