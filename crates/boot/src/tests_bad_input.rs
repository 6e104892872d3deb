//! Bad kernels, initrds, command lines and memory layouts: each is a specific error, never a
//! panic.

use super::*;
use crate::{AcpiError, CmdlineError, E820Error, InitrdError, KernelError};

fn kernel_err(mem: &GuestMemoryMmap, image: &[u8]) -> KernelError {
    match boot(mem, image, None, "") {
        Err(Error::Kernel(e)) => e,
        other => panic!("expected a kernel error, got {other:?}"),
    }
}

#[test]
fn empty_and_unknown_kernels() {
    let mem = guest(32 * MIB);
    assert!(matches!(kernel_err(&mem, &[]), KernelError::Empty));
    assert!(matches!(
        kernel_err(&mem, b"\x7f"),
        KernelError::UnknownFormat { len: 1 }
    ));
    let noise = pattern(8192, 42);
    assert!(matches!(
        kernel_err(&mem, &noise),
        KernelError::UnknownFormat { len: 8192 }
    ));
}

#[test]
fn truncated_bzimage() {
    let mem = guest(32 * MIB);
    let mut image = bzimage(&BzSpec::default());
    image[0x1f1] = 40; // 41 * 512 bytes of setup, past the end of the file
    let len = image.len() as u64;
    assert!(matches!(
        kernel_err(&mem, &image),
        KernelError::BzImageTruncated { setup_sects: 40, setup_size: 20992, len: l } if l == len
    ));
    // Header present but the file stops right after it.
    let short = &bzimage(&BzSpec::default())[..0x300];
    assert!(matches!(
        kernel_err(&mem, short),
        KernelError::BzImageTruncated { .. }
    ));
}

#[test]
fn bzimage_without_64_bit_entry() {
    let mem = guest(32 * MIB);
    let old = bzimage(&BzSpec {
        version: 0x0206,
        ..BzSpec::default()
    });
    assert!(matches!(
        kernel_err(&mem, &old),
        KernelError::BzImageTooOld { version: 0x0206 }
    ));
    let no64 = bzimage(&BzSpec {
        xloadflags: 0,
        ..BzSpec::default()
    });
    assert!(matches!(
        kernel_err(&mem, &no64),
        KernelError::BzImageNot64Bit { xloadflags: 0, .. }
    ));
    let low = bzimage(&BzSpec {
        loadflags: 0,
        ..BzSpec::default()
    });
    assert!(matches!(
        kernel_err(&mem, &low),
        KernelError::BzImageNot64Bit { loadflags: 0, .. }
    ));
}

#[test]
fn kernel_larger_than_memory() {
    let mem = guest(4 * MIB);
    let big = bzimage(&BzSpec {
        payload_len: 6 << 20,
        init_size: 0,
        ..BzSpec::default()
    });
    assert!(matches!(
        kernel_err(&mem, &big),
        KernelError::DoesNotFit {
            ram_end: 0x40_0000,
            ..
        }
    ));
    // Small image, but its decompression buffer (init_size at 16 MiB) exceeds 8 MiB of RAM.
    let mem = guest(8 * MIB);
    let image = bzimage(&BzSpec::default());
    assert!(matches!(
        kernel_err(&mem, &image),
        KernelError::DoesNotFit {
            end: 0x140_0000,
            ..
        }
    ));
    let elf_img = elf(&ElfSpec {
        memsz: 16 << 20,
        ..ElfSpec::default()
    });
    assert!(matches!(
        kernel_err(&mem, &elf_img),
        KernelError::DoesNotFit { .. }
    ));
}

#[test]
fn bad_elf_kernels() {
    let mem = guest(64 * MIB);
    let low = elf(&ElfSpec {
        paddr: 0x8000,
        entry: 0x8000,
        ..ElfSpec::default()
    });
    assert!(matches!(
        kernel_err(&mem, &low),
        KernelError::ElfSegmentTooLow { paddr: 0x8000 }
    ));
    let class32 = elf(&ElfSpec {
        class: 1,
        ..ElfSpec::default()
    });
    assert!(matches!(
        kernel_err(&mem, &class32),
        KernelError::ElfUnsupported { .. }
    ));
    let arm = elf(&ElfSpec {
        machine: 183,
        ..ElfSpec::default()
    });
    assert!(matches!(
        kernel_err(&mem, &arm),
        KernelError::ElfUnsupported { .. }
    ));
    let entry = elf(&ElfSpec {
        entry: 0x200_0000,
        ..ElfSpec::default()
    });
    assert!(matches!(
        kernel_err(&mem, &entry),
        KernelError::ElfBadEntry {
            entry: 0x200_0000,
            ..
        }
    ));
    let pvh = elf(&ElfSpec {
        pvh_entry: Some(0x10),
        ..ElfSpec::default()
    });
    assert!(matches!(
        kernel_err(&mem, &pvh),
        KernelError::ElfBadEntry { entry: 0x10, .. }
    ));
    let full = elf(&ElfSpec::default());
    let cut = &full[..ELF_PAYLOAD_OFFSET + 16];
    assert!(matches!(
        kernel_err(&mem, cut),
        KernelError::Truncated {
            what: "PT_LOAD segment",
            ..
        }
    ));
    assert!(matches!(
        kernel_err(&mem, &full[..40]),
        KernelError::Truncated {
            what: "ELF header",
            ..
        }
    ));
    let mut no_phdrs = full.clone();
    no_phdrs[56] = 0;
    assert!(matches!(
        kernel_err(&mem, &no_phdrs),
        KernelError::ElfUnsupported { .. }
    ));
}

#[test]
fn corrupted_headers_never_panic() {
    let mem = guest(32 * MIB);
    let images = [
        bzimage(&BzSpec::default()),
        elf(&ElfSpec {
            pvh_entry: Some(0x100_0000),
            ..ElfSpec::default()
        }),
    ];
    let rounds = 1000;
    let mut rng = pattern(16 * rounds, 77).into_iter();
    let mut next = move || usize::from(rng.next().expect("enough random bytes"));
    let extremes: [&[u8]; 4] = [&[0xff; 8], &[0; 8], &[0x80; 8], &[0x7f, 0xff, 0xff, 0xff]];
    let (mut ok, mut err) = (0, 0);
    for round in 0..rounds {
        let mut image = images[round % 2].clone();
        // Corrupt the first 0x280 bytes (ELF and program headers, notes, bzImage setup
        // header): single random bytes, or a field set to an extreme value.
        for _ in 0..1 + next() % 3 {
            let off = next() * 0x278 / 256;
            if next() % 2 == 0 {
                image[off] = next() as u8;
            } else {
                let v = extremes[next() % extremes.len()];
                image[off..off + v.len()].copy_from_slice(v);
            }
        }
        if next() % 4 == 0 {
            image.truncate(next() * image.len() / 256);
        }
        match boot(&mem, &image, None, "") {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    // Both outcomes occur: the corruptions reach past the first check.
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

#[test]
fn command_line_limits() {
    let mem = guest(32 * MIB);
    let image = bzimage(&BzSpec {
        cmdline_size: 255,
        ..BzSpec::default()
    });
    let long = "x".repeat(256);
    assert!(matches!(
        boot(&mem, &image, None, &long),
        Err(Error::Cmdline(CmdlineError::TooLong { len: 256, max: 255 }))
    ));
    assert!(boot(&mem, &image, None, &long[..255]).is_ok());
    let huge = "y".repeat(CMDLINE_MAX_SIZE);
    let pvh = elf(&ElfSpec {
        pvh_entry: Some(0x100_0000),
        ..ElfSpec::default()
    });
    assert!(matches!(
        boot(&mem, &pvh, None, &huge),
        Err(Error::Cmdline(CmdlineError::TooLong { max, .. })) if max == CMDLINE_MAX_SIZE - 1
    ));
    assert!(matches!(
        boot(&mem, &image, None, "a\0b"),
        Err(Error::Cmdline(CmdlineError::ContainsNul { offset: 1 }))
    ));
}

#[test]
fn initrd_errors() {
    let mem = guest(24 * MIB);
    let image = bzimage(&BzSpec::default()); // needs memory up to 16 MiB + 4 MiB
    let too_big = vec![0u8; 5 << 20];
    assert!(matches!(
        boot(&mem, &image, Some(&too_big), ""),
        Err(Error::Initrd(InitrdError::DoesNotFit {
            size: 0x50_0000,
            lowest: 0x140_0000,
            limit: 0x180_0000
        }))
    ));
    assert!(matches!(
        boot(&mem, &image, Some(&[]), ""),
        Err(Error::Initrd(InitrdError::Empty))
    ));
    assert!(boot(&mem, &image, Some(&too_big[..3 << 20]), "").is_ok());
}

#[test]
fn bad_cpu_count_and_memory_layout() {
    let mem = guest(32 * MIB);
    let mut k = file_with(&bzimage(&BzSpec::default()));
    let cfg = BootConfig {
        kernel: &mut k,
        initrd: None,
        cmdline: "",
        cpus: 0,
    };
    assert!(matches!(
        load(&mem, cfg),
        Err(Error::Acpi(AcpiError::BadCpuCount { cpus: 0 }))
    ));

    let in_hole = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10_0000),
        (GuestAddress(MMIO_HOLE_START), 0x1000),
    ])
    .unwrap();
    assert!(matches!(
        boot(&in_hole, &bzimage(&BzSpec::default()), None, ""),
        Err(Error::MemoryMap(E820Error::RamInMmioHole { .. }))
    ));
}
