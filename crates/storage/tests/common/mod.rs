//! Helpers shared by the storage integration tests: scratch folders, qemu-img, patterns.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A scratch folder removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        // Cargo's scratch folder for integration tests (on disk, so O_DIRECT works there).
        let base = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let d = base.join(format!(
            "storage-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether qemu-img is installed; says so loudly when it is not.
pub fn have_qemu_img() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("\n*** SKIPPED: qemu-img is not installed (apt-get install qemu-utils) ***\n");
    }
    ok
}

/// Runs a qemu tool, panicking with its output on failure; returns stdout.
pub fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `qemu-img`, returning (exit code, stdout+stderr).
pub fn qemu_img_status(args: &[&str]) -> (i32, String) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A raw file of `size` bytes with random data in some 64 KiB-aligned stretches, zeroes and
/// compressible runs elsewhere.
pub fn patterned_raw(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut data = vec![0u8; size as usize];
    let mut off = 0usize;
    while off < data.len() {
        let len = (4096 * (1 + rng.below(40))) as usize;
        let end = (off + len).min(data.len());
        match rng.below(4) {
            0 => {}
            1 => data[off..end].fill((rng.next() & 0xff) as u8),
            _ => rng.fill(&mut data[off..end]),
        }
        off = end;
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// Reads a whole backend.
pub fn read_all(disk: &mut dyn storage::BlockBackend) -> Vec<u8> {
    let mut out = vec![0u8; disk.size() as usize];
    // Odd-sized reads cross cluster boundaries.
    let step = 3 * 4096 + 512;
    let mut off = 0usize;
    while off < out.len() {
        let end = (off + step).min(out.len());
        disk.read_at(&mut out[off..end], off as u64).unwrap();
        off = end;
    }
    out
}

/// `qemu-img convert -O raw` of an image, read back.
pub fn qemu_raw(img: &Path, scratch: &Scratch) -> Vec<u8> {
    qemu_raw_fmt(img, "qcow2", scratch)
}

/// `qemu-img convert -f FMT -O raw` of an image, read back.
pub fn qemu_raw_fmt(img: &Path, fmt: &str, scratch: &Scratch) -> Vec<u8> {
    let out = scratch.path("qemu-raw.out");
    let _ = std::fs::remove_file(&out);
    run(
        "qemu-img",
        &["convert", "-f", fmt, "-O", "raw", p(img), p(&out)],
    );
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    v
}

/// Asserts two disks' contents are equal, naming the first difference.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i:#x}: got {:#x}, want {:#x}",
            got[i], want[i]
        );
    }
}
