//! Entry points for the cargo-fuzz targets (fuzz/): open an in-memory image of each format
//! from arbitrary bytes, read from it, and for qcow2 also check it and write to it.

use crate::backend::BlockBackend;
use crate::file::MemFile;
use crate::formats::qcow2::{Qcow2, Qcow2Options};
use crate::formats::vhd::Vhd;
use crate::formats::vhdx::Vhdx;

/// Reads a few places of a disk; errors are fine, panics are not.
fn poke(d: &mut dyn BlockBackend) {
    let size = d.size();
    let mut buf = vec![0u8; 8192];
    for off in [0, size / 3, size / 2, size.saturating_sub(8192)] {
        let off = off - off % 512;
        let n = (size - off.min(size)).min(8192) as usize;
        let _ = d.read_at(&mut buf[..n], off);
        let _ = d.extent(off, n as u64);
    }
}

/// qcow2: read-only open, reads, check; then a read-write open, writes, flush, check.
pub fn qcow2(data: &[u8]) {
    let opts = Qcow2Options {
        writable: false,
        l2_cache_bytes: 1 << 20,
    };
    if let Ok(mut q) = Qcow2::open(Box::new(MemFile::new(data.to_vec(), "fuzz.qcow2")), opts) {
        poke(&mut q);
        let _ = q.check(false);
    }
    let opts = Qcow2Options {
        writable: true,
        ..opts
    };
    if let Ok(mut q) = Qcow2::open(Box::new(MemFile::new(data.to_vec(), "fuzz.qcow2")), opts) {
        let size = q.size();
        let _ = q.write_at(&[0x5a; 4096], 0);
        if size > 3 * 65536 {
            let _ = q.write_at(&[0xa5; 512], size / 2 - size / 2 % 512);
            let _ = q.discard(65536, 65536);
        }
        let _ = q.flush();
        poke(&mut q);
        let _ = q.check(true);
    }
}

/// VHD: open and read.
pub fn vhd(data: &[u8]) {
    if let Ok(mut v) = Vhd::open(Box::new(MemFile::new(data.to_vec(), "fuzz.vhd"))) {
        poke(&mut v);
    }
}

/// VHDX: open and read.
pub fn vhdx(data: &[u8]) {
    if let Ok(mut v) = Vhdx::open(Box::new(MemFile::new(data.to_vec(), "fuzz.vhdx"))) {
        poke(&mut v);
    }
}
