//! Creating empty qcow2 images (optionally over a backing file).

use std::path::Path;

use super::header::{Header, MAX_L1_BYTES};
use super::refcount;
use crate::backend::BlockError;
use crate::file::ImageFile;

/// Parameters of a new qcow2 image.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Virtual size in bytes.
    pub size: u64,
    /// Cluster size: a power of two from 512 B to 2 MiB.
    pub cluster_size: u64,
    /// 2 or 3.
    pub version: u32,
    /// Refcount width in bits: 1, 2, 4, ..., 64 (version 3 only; version 2 uses 16).
    pub refcount_bits: u32,
    /// Backing file name as stored (relative names resolve against the image's folder).
    pub backing_file: Option<String>,
    /// Format of the backing file ("raw" or "qcow2"); required with a backing file.
    pub backing_format: Option<String>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: 64 << 10,
            version: 3,
            refcount_bits: 16,
            backing_file: None,
            backing_format: None,
        }
    }
}

fn invalid(file: &dyn ImageFile, what: String) -> BlockError {
    BlockError::Unsupported {
        path: file.path().to_path_buf(),
        what,
    }
}

/// Writes an empty qcow2 image into `file` (which should be empty).
pub fn create(file: &dyn ImageFile, opts: &CreateOptions) -> Result<(), BlockError> {
    let cs = opts.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(invalid(file, format!("cluster size {cs}")));
    }
    if !opts.refcount_bits.is_power_of_two() || opts.refcount_bits > 64 {
        return Err(invalid(
            file,
            format!("refcount width of {} bits", opts.refcount_bits),
        ));
    }
    if opts.version != 3 && (opts.version != 2 || opts.refcount_bits != 16) {
        return Err(invalid(
            file,
            format!(
                "qcow2 version {} with {}-bit refcounts",
                opts.version, opts.refcount_bits
            ),
        ));
    }
    if opts.backing_file.is_some() != opts.backing_format.is_some() {
        return Err(invalid(file, "a backing file without its format".into()));
    }
    if opts.size > 1 << 60 {
        return Err(invalid(
            file,
            format!("virtual size of {} bytes", opts.size),
        ));
    }
    let name_len = opts.backing_file.as_ref().map_or(0, |n| n.len() as u64);
    let fmt_len = opts
        .backing_format
        .as_ref()
        .map_or(0, |n| n.len() as u64 + 8);
    if name_len > 1023 || 112 + fmt_len.next_multiple_of(8) + 8 + name_len > cs {
        return Err(invalid(
            file,
            format!("backing file name of {name_len} bytes in {cs}-byte clusters"),
        ));
    }
    let cluster_bits = cs.trailing_zeros();
    let l1_size = opts.size.div_ceil(cs * (cs / 8));
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(invalid(
            file,
            format!(
                "virtual size {} for {cs}-byte clusters (L1 table too large)",
                opts.size
            ),
        ));
    }
    let l1_clusters = (l1_size * 8).div_ceil(cs).max(1);
    let mut h = Header {
        version: opts.version,
        cluster_bits,
        size: opts.size,
        l1_size: l1_size as u32,
        l1_table_offset: cs,
        refcount_order: opts.refcount_bits.trailing_zeros(),
        backing_file: opts.backing_file.clone(),
        backing_format: opts.backing_format.clone(),
        ..Header::default()
    };
    let mut counts = vec![1u64; 1 + l1_clusters as usize];
    let lay = refcount::layout(&mut counts, 1 + l1_clusters, cluster_bits, h.refcount_order)
        .map_err(|e| invalid(file, e))?;
    h.refcount_table_offset = lay.table_offset;
    h.refcount_table_clusters = lay.table_clusters as u32;
    let end = lay.table_offset + (lay.table_clusters + lay.blocks.len() as u64) * cs;
    file.set_len(end).map_err(|e| file.io_err(end, 0, e))?;
    for (off, block) in &lay.blocks {
        file.write_checked(block, *off)?;
    }
    let mut raw = Vec::with_capacity(lay.table.len() * 8);
    for e in &lay.table {
        raw.extend_from_slice(&e.to_be_bytes());
    }
    file.write_checked(&raw, lay.table_offset)?;
    file.write_checked(&h.to_bytes(), 0)?;
    file.sync_checked()
}

/// Creates a qcow2 image file at `path` (refusing to overwrite an existing file).
pub fn create_file(path: &Path, opts: &CreateOptions) -> Result<(), BlockError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| BlockError::Io {
            path: path.to_path_buf(),
            offset: 0,
            len: 0,
            source,
        })?;
    drop(f);
    let hf = crate::file::HostFile::open(path, true, false).map_err(|e| BlockError::Io {
        path: path.to_path_buf(),
        offset: 0,
        len: 0,
        source: std::io::Error::other(e.to_string()),
    })?;
    create(&hf, opts)
}
