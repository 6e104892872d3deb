//! qcow2 images made by qemu-img read byte for byte like `qemu-img convert -O raw`.

mod common;

use common::*;
use storage::{open_image, Format, OpenOptions};

const SIZE: u64 = 3 << 20;

fn ours(img: &std::path::Path) -> Vec<u8> {
    let mut d = open_image(img, Format::Qcow2, &OpenOptions::default()).unwrap();
    read_all(d.as_mut())
}

#[test]
fn cluster_sizes_versions_and_compression() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("q2read");
    let src = s.path("src.raw");
    let data = patterned_raw(&src, SIZE, 7);
    for cs in ["512", "4096", "65536", "2M"] {
        for compat in ["0.10", "1.1"] {
            for compress in [false, true] {
                let img = s.path(&format!("i-{cs}-{compat}-{compress}.qcow2"));
                let opts = format!("cluster_size={cs},compat={compat}");
                let mut args = vec!["convert", "-f", "raw", "-O", "qcow2", "-o", &opts];
                if compress {
                    args.push("-c");
                }
                args.extend([p(&src), p(&img)]);
                run("qemu-img", &args);
                assert_same(&format!("{cs} {compat} c={compress}"), &ours(&img), &data);
            }
        }
    }
}

#[test]
fn refcount_widths_prealloc_zero_clusters_and_extended_l2() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("q2var");
    let mut variants: Vec<String> = (0..=6)
        .map(|o| format!("refcount_bits={}", 1 << o))
        .collect();
    variants.push("preallocation=metadata".into());
    variants.push("extended_l2=on,cluster_size=65536".into());
    variants.push("compat=0.10".into());
    for (i, v) in variants.iter().enumerate() {
        let img = s.path(&format!("v{i}.qcow2"));
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", v, p(&img), "2M"],
        );
        let cmds = "write -P 0x11 0 100k\nwrite -P 0x22 200k 3k\nwrite -z 64k 64k\nwrite -P 0x33 1M 300k\ndiscard 1088k 64k\nwrite -z 1500k 4k\n";
        for c in cmds.lines() {
            run("qemu-io", &["-f", "qcow2", "-c", c, p(&img)]);
        }
        assert_same(v, &ours(&img), &qemu_raw(&img, &s));
    }
}

#[test]
fn backing_chain_of_three() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("q2chain");
    let base = s.path("base.raw");
    patterned_raw(&base, SIZE, 11);
    let mid = s.path("mid.qcow2");
    let top = s.path("top.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-b",
            "base.raw",
            "-F",
            "raw",
            p(&mid),
        ],
    );
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x5a 10k 70k", p(&mid)],
    );
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -z 1M 64k", p(&mid)],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            p(&mid),
            "-F",
            "qcow2",
            p(&top),
            "4M",
        ],
    );
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xa5 60k 8k", p(&top)],
    );
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x77 3500k 100k", p(&top)],
    );
    assert_same("chain", &ours(&top), &qemu_raw(&top, &s));
}
