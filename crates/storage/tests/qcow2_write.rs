//! Images thinvm writes pass `qemu-img check` (no errors, no leaks) and `qemu-img compare`
//! with a raw mirror written in the same test.

mod common;

use std::path::Path;

use common::*;
use storage::formats::qcow2::{create_file, CreateOptions};
use storage::{open_image, BlockBackend, Format, OpenOptions};

fn rw() -> OpenOptions {
    OpenOptions {
        writable: true,
        ..OpenOptions::default()
    }
}

/// Random writes, overwrites, discards, write-zeroes and flushes, mirrored in `mirror`.
fn exercise(
    disk: &mut dyn BlockBackend,
    mirror: &mut [u8],
    cs: u64,
    seed: u64,
    ops: usize,
    discard_zeroes: bool,
) {
    let mut rng = Rng(seed);
    let size = disk.size();
    for _ in 0..ops {
        let off = rng.below(size / 512) * 512;
        let len = ((1 + rng.below(3 * cs / 512 + 8)) * 512).min(size - off);
        match rng.below(10) {
            0..=5 => {
                let mut buf = vec![0u8; len as usize];
                rng.fill(&mut buf);
                disk.write_at(&buf, off).unwrap();
                mirror[off as usize..(off + len) as usize].copy_from_slice(&buf);
            }
            6 => {
                disk.write_zeroes(off, len).unwrap();
                mirror[off as usize..(off + len) as usize].fill(0);
            }
            7 => {
                // Whole clusters, so the mirror knows what to expect.
                let start = off - off % cs;
                let n = (len.div_ceil(cs) * cs).min(size - start);
                disk.discard(start, n).unwrap();
                if discard_zeroes {
                    mirror[start as usize..(start + n) as usize].fill(0);
                }
            }
            8 => disk.flush().unwrap(),
            _ => {
                let mut got = vec![0u8; len as usize];
                disk.read_at(&mut got, off).unwrap();
                assert_same(
                    "read-back",
                    &got,
                    &mirror[off as usize..(off + len) as usize],
                );
            }
        }
    }
    disk.flush().unwrap();
}

fn qemu_agrees(img: &Path, mirror: &[u8], s: &Scratch) {
    let (code, out) = qemu_img_status(&["check", p(img)]);
    assert_eq!(code, 0, "qemu-img check {}: {out}", img.display());
    assert!(out.contains("No errors were found"), "{out}");
    assert!(!out.contains("leaked"), "{out}");
    let m = s.path("mirror.raw");
    std::fs::write(&m, mirror).unwrap();
    let (code, out) = qemu_img_status(&["compare", "-f", "qcow2", "-F", "raw", p(img), p(&m)]);
    assert_eq!(code, 0, "qemu-img compare: {out}");
}

#[test]
fn thinvm_created_images() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("q2w");
    for (i, (cs, rb, ver)) in [
        (65536u64, 16u32, 3u32),
        (512, 64, 3),
        (4096, 1, 3),
        (2 << 20, 8, 3),
        (4096, 16, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let img = s.path(&format!("w{i}.qcow2"));
        let size = if cs == 2 << 20 { 9 << 20 } else { 3 << 20 };
        let opts = CreateOptions {
            size,
            cluster_size: cs,
            refcount_bits: rb,
            version: ver,
            ..CreateOptions::default()
        };
        create_file(&img, &opts).unwrap();
        let (code, out) = qemu_img_status(&["check", p(&img)]);
        assert_eq!(code, 0, "fresh image: {out}");
        let mut mirror = vec![0u8; size as usize];
        {
            let mut d = open_image(&img, Format::Qcow2, &rw()).unwrap();
            exercise(d.as_mut(), &mut mirror, cs, 0x1234 + i as u64, 300, true);
        }
        qemu_agrees(&img, &mirror, &s);
        let mut d = open_image(&img, Format::Qcow2, &OpenOptions::default()).unwrap();
        assert_same("reopened", &read_all(d.as_mut()), &mirror);
    }
}

#[test]
fn qemu_created_images_with_compressed_data() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("q2wq");
    let src = s.path("src.raw");
    for (i, o) in [
        "cluster_size=4096",
        "cluster_size=65536,refcount_bits=2",
        "compat=0.10,cluster_size=1024",
    ]
    .iter()
    .enumerate()
    {
        let mut mirror = patterned_raw(&src, 2 << 20, 99 + i as u64);
        let img = s.path(&format!("c{i}.qcow2"));
        run(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                o,
                p(&src),
                p(&img),
            ],
        );
        let cs: u64 = if o.contains("65536") {
            65536
        } else if o.contains("1024") {
            1024
        } else {
            4096
        };
        {
            let mut d = open_image(&img, Format::Qcow2, &rw()).unwrap();
            exercise(d.as_mut(), &mut mirror, cs, 77 + i as u64, 200, true);
        }
        qemu_agrees(&img, &mirror, &s);
    }
}

#[test]
fn overlay_over_qcow2_and_raw() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("q2ov");
    let base = s.path("base.raw");
    let original = patterned_raw(&base, 2 << 20, 5);
    for (i, ver) in [3u32, 2].into_iter().enumerate() {
        let mut mirror = original.clone();
        let ov = s.path(&format!("ov{i}.qcow2"));
        let opts = CreateOptions {
            size: 2 << 20,
            cluster_size: 4096,
            version: ver,
            backing_file: Some("base.raw".into()),
            backing_format: Some("raw".into()),
            ..CreateOptions::default()
        };
        create_file(&ov, &opts).unwrap();
        {
            let mut d = open_image(&ov, Format::Qcow2, &rw()).unwrap();
            exercise(d.as_mut(), &mut mirror, 4096, 42 + i as u64, 250, ver == 3);
        }
        qemu_agrees(&ov, &mirror, &s);
        assert_same(
            "backing untouched",
            &std::fs::read(&base).unwrap(),
            &original,
        );
    }
}

#[test]
fn preallocated_images_and_refused_extended_l2_writes() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("q2pre");
    for (i, o) in [
        "preallocation=metadata,cluster_size=4096",
        "preallocation=falloc,cluster_size=65536",
    ]
    .iter()
    .enumerate()
    {
        let img = s.path(&format!("p{i}.qcow2"));
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", o, p(&img), "2M"],
        );
        let cs = if o.contains("4096") { 4096 } else { 65536 };
        let mut mirror = vec![0u8; 2 << 20];
        {
            let mut d = open_image(&img, Format::Qcow2, &rw()).unwrap();
            exercise(d.as_mut(), &mut mirror, cs, 500 + i as u64, 200, true);
        }
        qemu_agrees(&img, &mirror, &s);
    }
    let x = s.path("x.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            p(&x),
            "1M",
        ],
    );
    let e = open_image(&x, Format::Qcow2, &rw())
        .err()
        .expect("read-write open refused")
        .chain();
    assert!(e.contains("extended L2"), "{e}");
    assert!(open_image(&x, Format::Qcow2, &OpenOptions::default()).is_ok());
}

#[test]
fn compressed_convert_then_overwrite() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("q2comp");
    let src = s.path("src.raw");
    let data = patterned_raw(&src, 3 << 20, 1234);
    for cs in [4096u64, 65536] {
        let plain = s.path(&format!("plain{cs}.qcow2"));
        let comp = s.path(&format!("comp{cs}.qcow2"));
        let none = &mut |_, _| {};
        storage::ops::convert(
            &src,
            Format::Raw,
            &plain,
            Format::Qcow2,
            Some(cs),
            false,
            none,
        )
        .unwrap();
        storage::ops::convert(
            &src,
            Format::Raw,
            &comp,
            Format::Qcow2,
            Some(cs),
            true,
            none,
        )
        .unwrap();
        let (sp, sc) = (
            std::fs::metadata(&plain).unwrap().len(),
            std::fs::metadata(&comp).unwrap().len(),
        );
        assert!(sc < sp * 9 / 10, "compressed {sc} bytes vs plain {sp}");
        let (code, out) =
            qemu_img_status(&["compare", "-f", "qcow2", "-F", "raw", p(&comp), p(&src)]);
        assert_eq!(code, 0, "{out}");
        let mut mirror = data.clone();
        qemu_agrees(&comp, &mirror, &s);
        {
            let mut d = open_image(&comp, Format::Qcow2, &rw()).unwrap();
            exercise(d.as_mut(), &mut mirror, cs, 900 + cs, 150, true);
        }
        qemu_agrees(&comp, &mirror, &s);
    }
}

trait Chain {
    fn chain(self) -> String;
}
impl<E: std::error::Error> Chain for E {
    fn chain(self) -> String {
        storage::error_chain(&self)
    }
}

#[test]
fn odd_sized_images() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("q2odd");
    for (i, (size, cs)) in [((3 << 20) + 7 * 512, 65536u64), ((1 << 20) + 512, 4096)]
        .into_iter()
        .enumerate()
    {
        let img = s.path(&format!("odd{i}.qcow2"));
        create_file(
            &img,
            &CreateOptions {
                size,
                cluster_size: cs,
                ..CreateOptions::default()
            },
        )
        .unwrap();
        let mut mirror = vec![0u8; size as usize];
        {
            let mut d = open_image(&img, Format::Qcow2, &rw()).unwrap();
            // The last, partial cluster: written, zeroed and discarded whole.
            let tail = size - size % cs;
            d.write_at(&vec![0x77; (size - tail) as usize], tail)
                .unwrap();
            mirror[tail as usize..].fill(0x77);
            exercise(d.as_mut(), &mut mirror, cs, 4242 + i as u64, 200, true);
            d.write_zeroes(tail, size - tail).unwrap();
            mirror[tail as usize..].fill(0);
            d.write_at(&[0x99; 512], size - 512).unwrap();
            mirror[size as usize - 512..].fill(0x99);
        }
        qemu_agrees(&img, &mirror, &s);
    }
}
