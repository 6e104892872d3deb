//! `check` finds leaks and refcount errors, `check(repair)` fixes them, and a dirty image
//! (lazy refcounts, writer killed) is rebuilt on a read-write open.

mod common;

use common::*;
use storage::chain::open_qcow2;
use storage::formats::qcow2::{create_file, CreateOptions};
use storage::{BlockBackend, OpenOptions};

fn rw() -> OpenOptions {
    OpenOptions {
        writable: true,
        ..OpenOptions::default()
    }
}

/// Makes a leak: a cluster past the end of the metadata gets refcount 1 and nothing refers
/// to it (16-bit refcounts, as created by default).
fn leak_clusters(path: &std::path::Path, n: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut h = [0u8; 512];
    f.read_exact_at(&mut h, 0).unwrap();
    let cs = 1u64 << u32::from_be_bytes(h[20..24].try_into().unwrap());
    let rt = u64::from_be_bytes(h[48..56].try_into().unwrap());
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, rt).unwrap();
    let block = u64::from_be_bytes(e);
    let len = f.metadata().unwrap().len().next_multiple_of(cs);
    let first = len / cs;
    for c in first..first + n {
        assert!(
            c < cs / 2,
            "cluster {c} is covered by the first refcount block"
        );
        f.write_all_at(&1u16.to_be_bytes(), block + c * 2).unwrap();
    }
    f.set_len(len + n * cs).unwrap();
}

#[test]
fn leaks_are_found_and_repaired() {
    let s = Scratch::new("chk-leak");
    let img = s.path("leak.qcow2");
    create_file(
        &img,
        &CreateOptions {
            size: 4 << 20,
            cluster_size: 4096,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    {
        let mut q = open_qcow2(&img, &rw()).unwrap();
        q.write_at(&[7u8; 4096], 0).unwrap();
        q.flush().unwrap();
        assert_eq!(q.check(false).unwrap(), Default::default());
    }
    leak_clusters(&img, 5);
    if have_qemu_img() {
        let (code, out) = qemu_img_status(&["check", p(&img)]);
        assert_eq!(code, 3, "qemu-img sees the leaks: {out}");
    }
    let mut q = open_qcow2(&img, &rw()).unwrap();
    let r = q.check(false).unwrap();
    assert_eq!(r.corruptions, 0, "{:?}", r.messages);
    assert!(r.leaks >= 5, "{:?}", r.messages);
    let r = q.check(true).unwrap();
    assert_eq!((r.corruptions, r.leaks), (0, 0), "{:?}", r.messages);
    assert!(r.fixed >= 5);
    let mut buf = [0u8; 4096];
    q.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [7u8; 4096]);
    drop(q);
    if have_qemu_img() {
        let (code, out) = qemu_img_status(&["check", p(&img)]);
        assert_eq!(code, 0, "{out}");
    }
}

#[test]
fn dirty_image_is_rebuilt_on_open() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("chk-dirty");
    let img = s.path("dirty.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on,cluster_size=4096",
            p(&img),
            "2M",
        ],
    );
    let _ = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x42 0 300k",
            "-c",
            "abort",
            p(&img),
        ])
        .output();
    let hdr = std::fs::read(&img).unwrap();
    assert_eq!(hdr[79] & 1, 1, "qemu-io left the dirty bit set");
    // Read-only opens read the data as is; the stale refcounts show as errors.
    let mut q = open_qcow2(&img, &OpenOptions::default()).unwrap();
    let mut buf = vec![0u8; 300 << 10];
    q.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0x42));
    assert!(q.check(false).unwrap().corruptions > 0);
    drop(q);
    let mut q = open_qcow2(&img, &rw()).unwrap();
    assert_eq!(q.check(false).unwrap().corruptions, 0);
    q.write_at(&[1u8; 4096], 1 << 20).unwrap();
    drop(q);
    assert_eq!(std::fs::read(&img).unwrap()[79] & 1, 0, "dirty bit cleared");
    let (code, out) = qemu_img_status(&["check", p(&img)]);
    assert_eq!(code, 0, "{out}");
}
