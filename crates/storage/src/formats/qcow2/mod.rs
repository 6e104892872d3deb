//! qcow2 images, versions 2 and 3: reads (zero, compressed and extended-L2 clusters, backing
//! files) and writes with ordered metadata updates.
//!
//! Write ordering: a new cluster's refcount is written through at allocation; data is written
//! at once; L2 and L1 changes stay in memory until [`BlockBackend::flush`], which syncs (data and
//! refcounts durable), writes the L2 tables, syncs, writes the L1 entries, syncs, and only then
//! drops the refcounts of clusters no longer referenced. A crash at any point leaves at worst
//! leaked clusters, and every flushed write in place.

mod check;
mod compress;
mod create;
pub mod header;
mod l2;
mod meta;
mod refcount;
mod rw;

use std::collections::{BTreeSet, HashSet};

use crate::backend::{check_range, BlockBackend, BlockError, Extent, ExtentKind, HostRange};
use crate::file::ImageFile;
pub use check::CheckReport;
pub use create::{create, create_file, CreateOptions};
use header::{incompat, Header};
use l2::L2Cache;
use refcount::Refcounts;

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO_FLAG: u64 = 1;

/// Error opening a qcow2 image.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// I/O or corruption found while opening.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// Shorter than a header.
    #[error("file of {len} bytes is too short for a qcow2 header")]
    Truncated {
        /// File length.
        len: u64,
    },
    /// Not "QFI\xfb".
    #[error("not a qcow2 image (bad magic)")]
    BadMagic,
    /// Not version 2 or 3.
    #[error("qcow2 version {0} is not supported (only 2 and 3)")]
    UnsupportedVersion(u32),
    /// A header field out of bounds.
    #[error("header field {field} = {value:#x}: {why}")]
    BadHeader {
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// A malformed header extension.
    #[error("header extension at offset {offset:#x}: {why}")]
    BadExtension {
        /// Offset of the extension.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// A feature this implementation does not handle.
    #[error("unsupported qcow2 feature: {0}")]
    Unsupported(String),
    /// Incompatible feature bits unknown to this implementation.
    #[error("unknown incompatible qcow2 features: {0}")]
    UnknownIncompatible(String),
    /// The corrupt bit is set and a read-write open was asked for.
    #[error("the image is marked corrupt; it can be opened read-only only (repair it with qemu-img check -r all)")]
    CorruptBit,
}

/// A decoded guest mapping for a run inside one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Map {
    Backing,
    Zero,
    /// Host offset of the run's first byte.
    Data(u64),
    /// The raw L2 entry of a compressed cluster.
    Compressed(u64),
}

/// An open qcow2 image.
pub struct Qcow2 {
    file: Box<dyn ImageFile>,
    h: Header,
    cs: u64,
    ext_l2: bool,
    l2_bits: u32,
    l1: Vec<u64>,
    l1_dirty: BTreeSet<usize>,
    l2: L2Cache,
    rc: Refcounts,
    backing: Option<Box<dyn BlockBackend>>,
    read_only: bool,
    /// Tracked end of the file (bytes).
    end: u64,
    /// L2 entries whose clusters lose a reference once the new metadata is durable.
    pending_free: Vec<u64>,
    needs_sync: bool,
    /// Cluster offsets of L2 tables and refcount blocks (never written as data).
    meta: HashSet<u64>,
    /// Cluster offsets of refcount blocks (never used as L2 tables).
    refblocks: HashSet<u64>,
    ccache: Option<(u64, Vec<u8>)>,
    /// Host cluster being filled with compressed data, and the bytes used in it.
    ctail: Option<(u64, u64)>,
}

/// How to open a qcow2 image.
#[derive(Debug, Clone, Copy)]
pub struct Qcow2Options {
    /// Open for writing.
    pub writable: bool,
    /// Bytes of L2 tables kept in memory (at least two tables).
    pub l2_cache_bytes: u64,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options {
            writable: false,
            l2_cache_bytes: 4 << 20,
        }
    }
}

fn read_table(file: &dyn ImageFile, off: u64, entries: u64) -> Result<Vec<u64>, BlockError> {
    let mut raw = vec![0u8; (entries * 8) as usize];
    file.read_exact_at(&mut raw, off)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("chunks of 8")))
        .collect())
}

impl Qcow2 {
    /// Opens the image in `file` (without its backing file: see [`Qcow2::set_backing`]).
    pub fn open(file: Box<dyn ImageFile>, opts: Qcow2Options) -> Result<Self, Qcow2Error> {
        let flen = file.len_checked()?;
        let mut first = vec![0u8; 512];
        file.read_zero_fill(&mut first, 0)?;
        let cb = u32::from_be_bytes([first[20], first[21], first[22], first[23]]);
        if (9..=21).contains(&cb) {
            first = vec![0u8; 1 << cb];
            file.read_zero_fill(&mut first, 0)?;
        }
        let h = Header::parse(&first[..(flen.min(first.len() as u64) as usize)], flen)?;
        Self::check_features(&h, opts.writable)?;
        let cs = h.cluster_size();
        let l1 = read_table(&*file, h.l1_table_offset, h.l1_size.into())?;
        let rt_entries = u64::from(h.refcount_table_clusters) * cs / 8;
        let rt = read_table(&*file, h.refcount_table_offset, rt_entries)?;
        let rc = Refcounts::new(
            rt,
            h.refcount_table_offset,
            h.refcount_order,
            h.cluster_bits,
        );
        let ext_l2 = h.incompatible & incompat::EXTL2 != 0;
        let l2_bits = h.cluster_bits - if ext_l2 { 4 } else { 3 };
        let tables = (opts.l2_cache_bytes / cs).clamp(2, 4096) as usize;
        let mut q = Qcow2 {
            file,
            cs,
            ext_l2,
            l2_bits,
            l1,
            l1_dirty: BTreeSet::new(),
            l2: L2Cache::new(tables),
            rc,
            backing: None,
            read_only: !opts.writable,
            end: flen,
            pending_free: Vec::new(),
            needs_sync: false,
            meta: HashSet::new(),
            refblocks: HashSet::new(),
            ccache: None,
            ctail: None,
            h,
        };
        q.rebuild_meta_set();
        if opts.writable {
            q.prepare_for_writing()?;
        }
        Ok(q)
    }

    fn check_features(h: &Header, writable: bool) -> Result<(), Qcow2Error> {
        if h.incompatible & incompat::DATA_FILE != 0 || h.has_data_file {
            return Err(Qcow2Error::Unsupported("external data file".into()));
        }
        if h.incompatible & incompat::COMPRESSION != 0 {
            return Err(Qcow2Error::Unsupported(format!(
                "compression type {} (only deflate is supported)",
                h.compression_type
            )));
        }
        if writable {
            if h.incompatible & incompat::CORRUPT != 0 {
                return Err(Qcow2Error::CorruptBit);
            }
            if h.incompatible & incompat::EXTL2 != 0 {
                return Err(Qcow2Error::Unsupported(
                    "writing images with extended L2 entries".into(),
                ));
            }
            if h.nb_snapshots > 0 {
                return Err(Qcow2Error::Unsupported(
                    "writing images with internal snapshots".into(),
                ));
            }
        }
        Ok(())
    }

    /// Attaches the backing file named in the header (opened by the caller).
    pub fn set_backing(&mut self, backing: Box<dyn BlockBackend>) {
        self.backing = Some(backing);
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.h
    }

    /// Closes the image without the final flush, as a crash would (for tests and tools
    /// that simulate one): unflushed L2/L1 updates are lost, at worst leaking clusters.
    pub fn abandon(mut self) {
        self.read_only = true;
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.cs
    }

    /// Bytes the host file occupies on disk.
    pub fn allocated_bytes(&self) -> u64 {
        self.file.allocated_bytes().unwrap_or(0)
    }

    /// Writes guest data (the uncompressed path of every write).
    fn write_at_plain(&mut self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.writable()?;
        check_range(offset, buf.len() as u64, self.h.size)?;
        // Whole clusters are placed first and their data written in contiguous runs.
        let mut run: Option<(u64, usize, usize)> = None; // (host, start in buf, length)
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = ((self.cs - pos % self.cs) as usize).min(buf.len() - done);
            if n as u64 == self.cs {
                // Entering another L2 table may evict (and write) a dirty one: data first.
                if pos.is_multiple_of(self.cs << self.l2_bits) {
                    if let Some((h, s, l)) = run.take() {
                        self.file.write_checked(&buf[s..s + l], h)?;
                    }
                }
                let host = self.place_full_cluster(pos)?;
                run = match run {
                    Some((h, s, l)) if h + l as u64 == host => Some((h, s, l + n)),
                    Some((h, s, l)) => {
                        self.file.write_checked(&buf[s..s + l], h)?;
                        Some((host, done, n))
                    }
                    None => Some((host, done, n)),
                };
            } else {
                if let Some((h, s, l)) = run.take() {
                    self.file.write_checked(&buf[s..s + l], h)?;
                }
                self.write_chunk(pos, &buf[done..done + n])?;
            }
            done += n;
        }
        if let Some((h, s, l)) = run {
            self.file.write_checked(&buf[s..s + l], h)?;
        }
        Ok(())
    }

    fn corrupt(&self, detail: String) -> BlockError {
        BlockError::Corrupt {
            path: self.file.path().to_path_buf(),
            detail,
        }
    }

    fn writable(&self) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly {
                path: self.file.path().to_path_buf(),
            });
        }
        Ok(())
    }

    /// Splits `[offset, offset+len)` into whole clusters and head/tail pieces, calling
    /// `whole(cluster_start)` or `part(start, len)`.
    fn for_clusters(
        &mut self,
        offset: u64,
        len: u64,
        whole: fn(&mut Self, u64) -> Result<(), BlockError>,
        part: fn(&mut Self, u64, u64) -> Result<(), BlockError>,
    ) -> Result<(), BlockError> {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let in_cl = pos % self.cs;
            let n = (self.cs - in_cl).min(end - pos);
            if n == self.cs || (in_cl == 0 && pos + n == self.h.size) {
                whole(self, pos)?;
            } else {
                part(self, pos, n)?;
            }
            pos += n;
        }
        Ok(())
    }
}

impl BlockBackend for Qcow2 {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.h.size)?;
        self.read_into(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.write_at_plain(buf, offset)
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.flush_metadata()
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.writable()?;
        check_range(offset, len, self.h.size)?;
        self.for_clusters(
            offset,
            len,
            |q, c| q.zero_cluster(c, true),
            |_, _, _| Ok(()),
        )
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.writable()?;
        check_range(offset, len, self.h.size)?;
        self.for_clusters(
            offset,
            len,
            |q, c| q.zero_cluster(c, false),
            |q, pos, n| {
                let zeros = vec![0u8; n as usize];
                q.write_chunk(pos, &zeros)
            },
        )
    }

    fn size(&self) -> u64 {
        self.h.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn alignment(&self) -> u64 {
        self.file.alignment().max(512)
    }

    fn extent(&mut self, offset: u64, len: u64) -> Result<Extent, BlockError> {
        check_range(offset, len, self.h.size)?;
        let kind_of = |m: Map| match m {
            Map::Backing => ExtentKind::Backing,
            Map::Zero => ExtentKind::Zero,
            Map::Data(_) | Map::Compressed(_) => ExtentKind::Data,
        };
        let (m, run) = self.map(offset)?;
        let kind = kind_of(m);
        let mut total = run.min(len);
        while total < len {
            let (m, run) = self.map(offset + total)?;
            if kind_of(m) != kind {
                break;
            }
            total = (total + run).min(len);
        }
        Ok(Extent {
            kind,
            len: total.max(1),
        })
    }

    fn host_range(
        &mut self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<Option<HostRange>, BlockError> {
        check_range(offset, len, self.h.size)?;
        if write && self.read_only {
            return Ok(None);
        }
        let Some(fd) = self.file.raw_fd() else {
            return Ok(None);
        };
        Ok(self
            .contiguous_host(offset, len, write)?
            .map(|offset| HostRange { fd, offset }))
    }

    fn backing_mut(&mut self) -> Option<&mut dyn BlockBackend> {
        match &mut self.backing {
            Some(b) => Some(b.as_mut()),
            None => None,
        }
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if !self.read_only {
            if let Err(e) = self.flush_metadata() {
                tracing::error!(
                    "qcow2 {}: flush on close failed: {e}",
                    self.file.path().display()
                );
            }
        }
    }
}
