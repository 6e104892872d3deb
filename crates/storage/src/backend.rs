//! The block-backend interface every disk format implements.

use std::io;
use std::path::PathBuf;

/// Error of one block operation (read, write, flush, discard, write-zeroes).
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The host file failed.
    #[error("I/O error on {path} at offset {offset:#x} (length {len})")]
    Io {
        /// Host file.
        path: PathBuf,
        /// Offset in the host file.
        offset: u64,
        /// Length of the failed access.
        len: u64,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The request does not fit in the virtual disk.
    #[error("request at offset {offset:#x} length {len} is outside the disk of {size} bytes")]
    OutOfRange {
        /// Guest offset.
        offset: u64,
        /// Request length.
        len: u64,
        /// Virtual disk size.
        size: u64,
    },
    /// A write to an image opened read-only.
    #[error("{path} is opened read-only")]
    ReadOnly {
        /// Image path.
        path: PathBuf,
    },
    /// Metadata found inconsistent while serving a request.
    #[error("corrupt image {path}: {detail}")]
    Corrupt {
        /// Image path.
        path: PathBuf,
        /// What was wrong, with the offending values.
        detail: String,
    },
    /// The operation is not supported by this image.
    #[error("{what} is not supported for {path}")]
    Unsupported {
        /// Image path.
        path: PathBuf,
        /// The unsupported operation or feature.
        what: String,
    },
}

/// What a range of the virtual disk holds, as far as one layer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Data stored in this layer.
    Data,
    /// Reads as zeroes without data stored.
    Zero,
    /// Not allocated in this layer: reads come from the backing file (or zeroes without one).
    Backing,
}

/// A run of the virtual disk with one [`ExtentKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Kind of the run.
    pub kind: ExtentKind,
    /// Length of the run in bytes (at least 1, at most the length asked for).
    pub len: u64,
}

/// A contiguous stretch of a host file (see [`BlockBackend::host_range`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRange {
    /// The host file descriptor (owned by the backend; valid while it lives).
    pub fd: std::os::unix::io::RawFd,
    /// Offset in the host file.
    pub offset: u64,
}

/// One virtual disk: a raw file, a qcow2 image with its backing chain, a VHD or a VHDX.
pub trait BlockBackend: Send {
    /// Reads `buf.len()` bytes at guest offset `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError>;
    /// Writes `buf` at guest offset `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), BlockError>;
    /// Makes every completed write durable (and the metadata that points to it).
    fn flush(&mut self) -> Result<(), BlockError>;
    /// Tells the backend the range is unused; it then reads as zeroes where whole
    /// clusters (or blocks) were covered, and is unchanged elsewhere.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError>;
    /// Makes the range read as zeroes, deallocating where the format allows.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), BlockError>;
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// Preferred request alignment in bytes (a power of two).
    fn alignment(&self) -> u64 {
        512
    }
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// What the range starting at `offset` holds in this layer (the run may be shorter than `len`).
    fn extent(&mut self, offset: u64, len: u64) -> Result<Extent, BlockError> {
        let _ = offset;
        Ok(Extent {
            kind: ExtentKind::Data,
            len,
        })
    }
    /// Where `[offset, offset+len)` lives in one host file, contiguous, when an I/O engine may
    /// read (or, with `write`, overwrite) it there directly; `None` sends the request through
    /// [`BlockBackend::read_at`] / [`BlockBackend::write_at`] instead (allocation, copy-on-write,
    /// compressed or backing data).
    fn host_range(
        &mut self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<Option<HostRange>, BlockError> {
        let _ = (offset, len, write);
        Ok(None)
    }
    /// The backing file, for formats that have one.
    fn backing_mut(&mut self) -> Option<&mut dyn BlockBackend> {
        None
    }
}

/// Checks that `[offset, offset + len)` lies within a disk of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BlockError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { offset, len, size }),
    }
}

/// What a range holds through the whole chain: `Data` or `Zero` (never `Backing`).
pub fn chain_extent(
    disk: &mut dyn BlockBackend,
    offset: u64,
    len: u64,
) -> Result<Extent, BlockError> {
    let ext = disk.extent(offset, len)?;
    if ext.kind != ExtentKind::Backing {
        return Ok(ext);
    }
    match disk.backing_mut() {
        Some(b) if offset < b.size() => {
            let avail = (b.size() - offset).min(ext.len);
            let inner = chain_extent(b, offset, avail)?;
            Ok(inner)
        }
        _ => Ok(Extent {
            kind: ExtentKind::Zero,
            len: ext.len,
        }),
    }
}
