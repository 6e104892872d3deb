//! virtio-blk requests: parsing a descriptor chain (every descriptor checked) and running it on
//! a [`BlockBackend`](storage::BlockBackend) (in `execute.rs`).
//!
//! A chain that loops, runs past the queue, points outside guest memory, has a buffer of the
//! wrong direction, is longer than [`MAX_REQUEST_BYTES`] or addresses sectors past the disk fails
//! with `VIRTIO_BLK_S_IOERR` when its status byte is usable, and is returned with nothing written
//! otherwise; the device keeps serving the queue either way.

use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Bytes per sector in the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Largest data payload of one request (the sum of its data buffers).
pub const MAX_REQUEST_BYTES: u64 = 64 << 20;
/// Most descriptors one request may have (indirect tables can be long).
pub const MAX_DESCRIPTORS: usize = 1024;
/// Length of the device ID answered to GET_ID.
pub const ID_BYTES: usize = 20;

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The chain had no descriptor.
    #[error("empty descriptor chain")]
    Empty,
    /// The chain loops, runs past the table, or a descriptor could not be read.
    #[error("descriptor chain is broken (loop, bad next index or unreadable descriptor)")]
    Broken,
    /// More than [`MAX_DESCRIPTORS`] descriptors.
    #[error("descriptor chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// No writable status byte at the end of the chain.
    #[error("no writable status descriptor")]
    NoStatus,
    /// The header is missing, short or write-only.
    #[error("bad request header descriptor")]
    BadHeader,
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A buffer has the wrong direction for the request type.
    #[error("descriptor {index} has the wrong direction for request type {ty}")]
    WrongDirection {
        /// Position in the chain.
        index: usize,
        /// Request type.
        ty: u32,
    },
    /// The data is longer than [`MAX_REQUEST_BYTES`].
    #[error("request data of {len} bytes exceeds {MAX_REQUEST_BYTES}")]
    TooLong {
        /// Total data length.
        len: u64,
    },
    /// Data length is not a multiple of the sector size, or segments are malformed.
    #[error("request data length {len} is not a multiple of {what}")]
    Misaligned {
        /// Data length.
        len: u64,
        /// The unit it should be a multiple of.
        what: &'static str,
    },
    /// The sectors lie past the end of the disk.
    #[error("sectors {sector}+{bytes} bytes are outside the disk of {capacity} bytes")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Length in bytes.
        bytes: u64,
        /// Disk size.
        capacity: u64,
    },
    /// The disk is read-only.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// The backend failed.
    #[error("disk I/O failed: {0}")]
    Backend(String),
    /// Guest memory access failed after validation (memory changed under us).
    #[error("guest memory access at {0:#x} failed")]
    Memory(u64),
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Request type (`VIRTIO_BLK_T_*`).
    pub ty: u32,
    /// First sector.
    pub sector: u64,
    /// Data buffers (address, length).
    pub data: Vec<(GuestAddress, u32)>,
    /// Sum of the data lengths.
    pub data_len: u64,
}

/// The outcome of one chain: the status to write (if a status byte exists) and the used length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Where the status byte goes, if the chain has a usable one.
    pub status_addr: Option<GuestAddress>,
    /// The status.
    pub status: u8,
    /// Bytes written into the chain's writable buffers (including the status byte).
    pub used_len: u32,
}

fn in_memory(mem: &GuestMemoryMmap, d: &Descriptor) -> Result<(), RequestError> {
    let ok = d.len() == 0 || GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize);
    ok.then_some(()).ok_or(RequestError::OutsideMemory {
        addr: d.addr().0,
        len: d.len(),
    })
}

/// Collects the chain's descriptors; fails on a broken or overlong chain.
pub fn collect<I: Iterator<Item = Descriptor>>(chain: I) -> Result<Vec<Descriptor>, RequestError> {
    let mut descs = Vec::new();
    for d in chain {
        if descs.len() == MAX_DESCRIPTORS {
            return Err(RequestError::TooManyDescriptors);
        }
        descs.push(d);
    }
    match descs.last() {
        None => Err(RequestError::Empty),
        // The iterator stopped on a descriptor that still points to a next one: it hit its
        // length limit (a loop) or could not read the next descriptor.
        Some(d) if d.has_next() => Err(RequestError::Broken),
        Some(_) => Ok(descs),
    }
}

/// The status byte's address: the last byte of the last descriptor, which must be writable.
pub fn status_address(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Option<GuestAddress> {
    let last = descs.last()?;
    if !last.is_write_only() || last.len() == 0 || in_memory(mem, last).is_err() {
        return None;
    }
    last.addr().checked_add(u64::from(last.len()) - 1)
}

/// Parses a request from its descriptors (header first, status last).
pub fn parse(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Result<Request, RequestError> {
    let (header, rest) = descs.split_first().ok_or(RequestError::Empty)?;
    let (_, data_descs) = rest.split_last().ok_or(RequestError::NoStatus)?;
    if header.is_write_only() || header.len() < 16 {
        return Err(RequestError::BadHeader);
    }
    in_memory(mem, header)?;
    let ty: u32 = mem
        .read_obj(header.addr())
        .map_err(|_| RequestError::BadHeader)?;
    let sector_addr = header
        .addr()
        .checked_add(8)
        .ok_or(RequestError::BadHeader)?;
    let sector: u64 = mem
        .read_obj(sector_addr)
        .map_err(|_| RequestError::BadHeader)?;
    let writes_guest = matches!(ty, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
    let mut data = Vec::with_capacity(data_descs.len());
    let mut data_len = 0u64;
    for (i, d) in data_descs.iter().enumerate() {
        in_memory(mem, d)?;
        if ty != VIRTIO_BLK_T_FLUSH && d.is_write_only() != writes_guest {
            return Err(RequestError::WrongDirection { index: i + 1, ty });
        }
        data_len = data_len
            .checked_add(u64::from(d.len()))
            .filter(|&l| l <= MAX_REQUEST_BYTES)
            .ok_or(RequestError::TooLong {
                len: data_len.saturating_add(u64::from(d.len())),
            })?;
        data.push((d.addr(), d.len()));
    }
    Ok(Request {
        ty,
        sector,
        data,
        data_len,
    })
}

#[path = "execute.rs"]
mod execute;
pub use execute::{complete, process};
