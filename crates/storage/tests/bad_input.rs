//! Bad images give clear errors: never a panic, a huge allocation, or a damaging write.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use storage::formats::qcow2::{create_file, CreateOptions};
use storage::{open_image, BlockError, Format, OpenError, OpenOptions};

fn rw() -> OpenOptions {
    OpenOptions {
        writable: true,
        ..OpenOptions::default()
    }
}

fn patch(path: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn be64_at(path: &Path, off: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).unwrap();
    u64::from_be_bytes(b)
}

fn open_err(path: &Path, opts: &OpenOptions) -> String {
    match open_image(path, Format::Qcow2, opts) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => storage::error_chain(&e),
    }
}

/// A 1 MiB v3 image with 64 KiB clusters and data in the first two clusters.
fn sample(s: &Scratch, name: &str) -> std::path::PathBuf {
    let img = s.path(name);
    create_file(
        &img,
        &CreateOptions {
            size: 1 << 20,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let mut d = open_image(&img, Format::Qcow2, &rw()).unwrap();
    d.write_at(&vec![0xabu8; 128 << 10], 0).unwrap();
    d.flush().unwrap();
    img
}

#[test]
fn truncated_files() {
    let s = Scratch::new("bad-trunc");
    let img = sample(&s, "t.qcow2");
    let full = std::fs::read(&img).unwrap();
    for len in [0usize, 3, 71, 100, 103, 4096, 65536 + 100, full.len() - 1] {
        let t = s.path(&format!("t{len}.qcow2"));
        std::fs::write(&t, &full[..len]).unwrap();
        match open_image(&t, Format::Qcow2, &OpenOptions::default()) {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(mut d) => {
                // Opening may succeed when only data is cut off; reads then fail cleanly or zero-fill.
                let mut buf = vec![0u8; 128 << 10];
                let _ = d.read_at(&mut buf, 0);
            }
        }
    }
    let e = open_err(&s.path("t3.qcow2"), &OpenOptions::default());
    assert!(e.contains("too short"), "{e}");
}

#[test]
fn impossible_header_fields() {
    let s = Scratch::new("bad-hdr");
    let cases: &[(u64, &[u8], &str)] = &[
        (20, &30u32.to_be_bytes(), "cluster_bits"),
        (24, &(1u64 << 62).to_be_bytes(), "size"),
        (36, &u32::MAX.to_be_bytes(), "l1_size"),
        (40, &(1u64 << 40).to_be_bytes(), "l1_table_offset"),
        (40, &0x200u64.to_be_bytes(), "l1_table_offset"),
        (48, &(1u64 << 50).to_be_bytes(), "refcount_table_offset"),
        (56, &u32::MAX.to_be_bytes(), "refcount_table_clusters"),
        (96, &7u32.to_be_bytes(), "refcount_order"),
        (100, &u32::MAX.to_be_bytes(), "header_length"),
        (4, &4u32.to_be_bytes(), "version 4"),
        (0, b"QFI\xfc", "magic"),
        (32, &1u32.to_be_bytes(), "encryption"),
        (72, &(1u64 << 10).to_be_bytes(), "bit 10"),
    ];
    for (i, (off, bytes, want)) in cases.iter().enumerate() {
        let img = sample(&s, &format!("h{i}.qcow2"));
        patch(&img, *off, bytes);
        let e = open_err(&img, &OpenOptions::default());
        assert!(e.contains(want), "case {want}: {e}");
    }
}

#[test]
fn entries_past_the_end_or_into_metadata() {
    let s = Scratch::new("bad-ent");
    // L1 entry past the end of the file.
    let img = sample(&s, "l1.qcow2");
    let l1 = be64_at(&img, 40);
    patch(&img, l1, &((1u64 << 63) | (1 << 40)).to_be_bytes());
    let mut d = open_image(&img, Format::Qcow2, &OpenOptions::default()).unwrap();
    let err = d.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert!(matches!(err, BlockError::Corrupt { .. }), "{err}");
    // L1 entry pointing at the refcount table: reads may go wrong, writes must not happen.
    let img2 = sample(&s, "l1rt.qcow2");
    let (l1b, rt) = (be64_at(&img2, 40), be64_at(&img2, 48));
    patch(&img2, l1b, &((1u64 << 63) | rt).to_be_bytes());
    let before = std::fs::read(&img2).unwrap();
    let mut d = open_image(&img2, Format::Qcow2, &rw()).unwrap();
    let err = d.write_at(&[0xee; 512], 4096).unwrap_err();
    assert!(err.to_string().contains("refusing to write"), "{err}");
    assert!(d.discard(0, 65536).is_err());
    drop(d);
    let after = std::fs::read(&img2).unwrap();
    assert_eq!(
        after[rt as usize..rt as usize + 4096],
        before[rt as usize..rt as usize + 4096],
        "refcount table untouched"
    );
    // A refcount table entry pointing at the L1 table: read-only works, writing is refused.
    let img3 = sample(&s, "rtl1.qcow2");
    let (l1c, rt3) = (be64_at(&img3, 40), be64_at(&img3, 48));
    patch(&img3, rt3, &l1c.to_be_bytes());
    assert!(open_image(&img3, Format::Qcow2, &OpenOptions::default()).is_ok());
    let e = open_err(&img3, &rw());
    assert!(e.contains("overlaps other metadata"), "{e}");
    // L1 entry into the header.
    patch(&img, l1, &(1u64 << 63 | 0x200).to_be_bytes());
    let mut d = open_image(&img, Format::Qcow2, &OpenOptions::default()).unwrap();
    assert!(d.read_at(&mut [0u8; 512], 0).is_err());

    // L2 entry past the end, and an L2 entry pointing at the L1 table (a write there would
    // destroy metadata: it must be refused).
    let img = sample(&s, "l2.qcow2");
    let l1 = be64_at(&img, 40);
    let l2 = be64_at(&img, l1) & 0x00ff_ffff_ffff_fe00;
    patch(&img, l2, &((1u64 << 63) | (1 << 41)).to_be_bytes());
    let mut d = open_image(&img, Format::Qcow2, &rw()).unwrap();
    assert!(matches!(
        d.read_at(&mut [0u8; 512], 0),
        Err(BlockError::Corrupt { .. })
    ));
    drop(d);
    patch(&img, l2, &((1u64 << 63) | l1).to_be_bytes());
    let before = std::fs::read(&img).unwrap();
    let mut d = open_image(&img, Format::Qcow2, &rw()).unwrap();
    let err = d.write_at(&[0xee; 512], 0).unwrap_err();
    assert!(err.to_string().contains("overlaps metadata"), "{err}");
    drop(d);
    assert_eq!(
        std::fs::read(&img).unwrap()[l1 as usize..l1 as usize + 512],
        before[l1 as usize..l1 as usize + 512]
    );

    // A compressed cluster that does not inflate.
    let img = sample(&s, "c.qcow2");
    let l2 = be64_at(&img, be64_at(&img, 40)) & 0x00ff_ffff_ffff_fe00;
    let host = be64_at(&img, l2) & 0x00ff_ffff_ffff_fe00;
    patch(&img, l2, &((1u64 << 62) | host).to_be_bytes());
    patch(&img, host, &[0xff; 512]);
    let mut d = open_image(&img, Format::Qcow2, &OpenOptions::default()).unwrap();
    let err = d.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert!(err.to_string().contains("inflate"), "{err}");
}

#[test]
fn backing_cycles_escapes_protocols_and_missing_formats() {
    let s = Scratch::new("bad-back");
    let mk = |name: &str, backing: &str, fmt: &str| {
        let img = s.path(name);
        let _ = std::fs::remove_file(&img);
        let opts = CreateOptions {
            size: 1 << 20,
            backing_file: Some(backing.into()),
            backing_format: Some(fmt.into()),
            ..CreateOptions::default()
        };
        create_file(&img, &opts).unwrap();
        img
    };
    let a = mk("a.qcow2", "b.qcow2", "qcow2");
    mk("b.qcow2", "a.qcow2", "qcow2");
    let e = open_err(&a, &OpenOptions::default());
    assert!(e.contains("cycle"), "{e}");
    let selfref = mk("self.qcow2", "self.qcow2", "qcow2");
    assert!(open_err(&selfref, &OpenOptions::default()).contains("cycle"));

    let inner = s.path("inner");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(s.path("outside.raw"), vec![0u8; 1 << 20]).unwrap();
    let esc = inner.join("esc.qcow2");
    create_file(
        &esc,
        &CreateOptions {
            size: 1 << 20,
            backing_file: Some("../outside.raw".into()),
            backing_format: Some("raw".into()),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let jail = OpenOptions {
        allowed_dirs: Some(vec![inner.clone()]),
        ..OpenOptions::default()
    };
    let e = open_err(&esc, &jail);
    assert!(e.contains("outside the allowed folders"), "{e}");
    // A symlink inside the allowed folder that points out of it.
    let link = inner.join("link.raw");
    std::os::unix::fs::symlink(s.path("outside.raw"), &link).unwrap();
    let e = open_image(&link, Format::Raw, &jail)
        .err()
        .expect("refused")
        .chain();
    assert!(e.contains("outside the allowed folders"), "{e}");
    let ok_raw = inner.join("ok.raw");
    std::fs::write(&ok_raw, vec![0u8; 4096]).unwrap();
    assert!(open_image(&ok_raw, Format::Raw, &jail).is_ok());
    assert!(open_image(&esc, Format::Qcow2, &OpenOptions::default()).is_ok());

    let proto = mk("proto.qcow2", "nbd:localhost:10809", "raw");
    assert!(matches!(
        open_image(&proto, Format::Qcow2, &OpenOptions::default()),
        Err(OpenError::ProtocolName { .. })
    ));
    let json = mk("json.qcow2", "json:{\"driver\":\"raw\"}", "raw");
    assert!(matches!(
        open_image(&json, Format::Qcow2, &OpenOptions::default()),
        Err(OpenError::ProtocolName { .. })
    ));

    // Erase the backing-format extension type: the format is then unknown, never probed.
    let nofmt = mk("nofmt.qcow2", "outside.raw", "raw");
    patch(&nofmt, 112, &0x1234_5678u32.to_be_bytes());
    assert!(matches!(
        open_image(&nofmt, Format::Qcow2, &OpenOptions::default()),
        Err(OpenError::NoBackingFormat { .. })
    ));

    let deep: Vec<_> = (0..20)
        .map(|i| {
            mk(
                &format!("d{i}.qcow2"),
                &format!("d{}.qcow2", i + 1),
                "qcow2",
            )
        })
        .collect();
    std::fs::write(s.path("d20.qcow2"), vec![0u8; 1 << 20]).unwrap();
    let shallow = OpenOptions {
        max_depth: 16,
        ..OpenOptions::default()
    };
    let e = open_err(&deep[0], &shallow);
    assert!(e.contains("deeper than 16"), "{e}");
}

#[test]
fn read_only_corrupt_bit_and_second_writer() {
    let s = Scratch::new("bad-ro");
    let img = sample(&s, "ro.qcow2");
    let mut d = open_image(&img, Format::Qcow2, &OpenOptions::default()).unwrap();
    assert!(matches!(
        d.write_at(&[1; 512], 0),
        Err(BlockError::ReadOnly { .. })
    ));
    assert!(matches!(
        d.discard(0, 65536),
        Err(BlockError::ReadOnly { .. })
    ));
    drop(d);

    let w = open_image(&img, Format::Qcow2, &rw()).unwrap();
    let e = open_err(&img, &rw());
    assert!(e.contains("in use by another writer"), "{e}");
    if have_qemu_img() {
        let (code, out) = qemu_img_status(&["check", p(&img)]);
        assert_ne!(code, 0, "qemu-img must see our write lock: {out}");
        assert!(out.contains("lock"), "{out}");
    }
    drop(w);

    // Incompatible bit 1: corrupt. Read-only is fine, read-write is refused.
    patch(&img, 72, &2u64.to_be_bytes());
    assert!(open_image(&img, Format::Qcow2, &OpenOptions::default()).is_ok());
    let e = open_err(&img, &rw());
    assert!(e.contains("marked corrupt"), "{e}");
}

#[test]
fn unsupported_features_from_qemu_img() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("bad-feat");
    let z = s.path("zstd.qcow2");
    let (code, _) = qemu_img_status(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        p(&z),
        "1M",
    ]);
    if code == 0 {
        let e = open_err(&z, &OpenOptions::default());
        assert!(e.contains("compression type 1"), "{e}");
    }
    let d = s.path("data.qcow2");
    let data = s.path("data.raw");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", p(&data)),
            p(&d),
            "1M",
        ],
    );
    let e = open_err(&d, &OpenOptions::default());
    assert!(e.contains("external data file"), "{e}");
}

trait Chain {
    fn chain(self) -> String;
}
impl<E: std::error::Error> Chain for E {
    fn chain(self) -> String {
        storage::error_chain(&self)
    }
}
