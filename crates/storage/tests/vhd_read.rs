//! VHD and VHDX images made by qemu-img read like `qemu-img convert -O raw`.

mod common;

use common::*;
use storage::{open_image, probe_format, Format, OpenOptions};

#[test]
fn vhd_and_vhdx_match_qemu() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("vhd");
    let src = s.path("src.raw");
    patterned_raw(&src, 5 << 20, 3);
    let cases = [
        ("vpc", "subformat=dynamic", Format::Vhd),
        ("vpc", "subformat=fixed", Format::Vhd),
        ("vpc", "subformat=dynamic,force_size=on", Format::Vhd),
        ("vhdx", "block_size=1M", Format::Vhdx),
        ("vhdx", "block_size=8M,log_size=1M", Format::Vhdx),
        ("vhdx", "subformat=fixed", Format::Vhdx),
        ("vhdx", "block_size=1M,block_state_zero=off", Format::Vhdx),
    ];
    for (i, (fmt, opts, ours)) in cases.iter().enumerate() {
        let img = s.path(&format!("i{i}.{fmt}"));
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                fmt,
                "-o",
                opts,
                p(&src),
                p(&img),
            ],
        );
        if fmt == &"vhdx" {
            // Sparse holes too: zero a stretch through qemu.
            run("qemu-io", &["-f", "vhdx", "-c", "write -z 2M 1M", p(&img)]);
        }
        let want = qemu_raw_fmt(&img, fmt, &s);
        let mut d = open_image(&img, *ours, &OpenOptions::default()).unwrap();
        assert_same(&format!("{fmt} {opts}"), &read_all(d.as_mut()), &want);
        assert!(d.write_at(&[0; 512], 0).is_err(), "read-only");
        if !opts.contains("fixed") || fmt == &"vhdx" {
            assert_eq!(probe_format(&img).unwrap(), *ours);
        }
    }
}

#[test]
fn damaged_vhd_and_vhdx_are_refused() {
    if !have_qemu_img() {
        return;
    }
    use std::os::unix::fs::FileExt;
    let s = Scratch::new("vhdbad");
    let img = s.path("d.vhd");
    run("qemu-img", &["create", "-q", "-f", "vpc", p(&img), "4M"]);
    let len = std::fs::metadata(&img).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    // BAT offset (dynamic header at 512, table offset at +16) far past the end.
    f.write_all_at(&(1u64 << 40).to_be_bytes(), 512 + 16)
        .unwrap();
    f.write_all_at(&(1u64 << 40).to_be_bytes(), len - 512 + 16)
        .unwrap_or(());
    let e = open_image(&img, Format::Vhd, &OpenOptions::default())
        .err()
        .unwrap()
        .chain();
    assert!(e.contains("past the end"), "{e}");

    let x = s.path("d.vhdx");
    run("qemu-img", &["create", "-q", "-f", "vhdx", p(&x), "4M"]);
    let f = std::fs::OpenOptions::new().write(true).open(&x).unwrap();
    // Spoil both headers' checksums.
    f.write_all_at(&[0xff; 4], (64 << 10) + 4).unwrap();
    f.write_all_at(&[0xff; 4], (128 << 10) + 4).unwrap();
    let e = open_image(&x, Format::Vhdx, &OpenOptions::default())
        .err()
        .unwrap()
        .chain();
    assert!(e.contains("checksum"), "{e}");
    let w = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let e = open_image(&x, Format::Vhdx, &w).err().unwrap().chain();
    assert!(e.contains("read-only"), "{e}");
}

trait Chain {
    fn chain(self) -> String;
}
impl<E: std::error::Error> Chain for E {
    fn chain(self) -> String {
        storage::error_chain(&self)
    }
}
