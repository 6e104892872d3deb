//! virtio-blk requests: parsing a descriptor chain (every descriptor checked) and running it on
//! a [`BlockBackend`].
//!
//! A chain that loops, runs past the queue, points outside guest memory, has a buffer of the
//! wrong direction, is longer than [`MAX_REQUEST_BYTES`] or addresses sectors past the disk fails
//! with `VIRTIO_BLK_S_IOERR` when its status byte is usable, and is returned with nothing written
//! otherwise; the device keeps serving the queue either way.

use storage::BlockBackend;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
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
/// Size of a discard / write-zeroes segment.
const SEGMENT_BYTES: u32 = 16;
/// Bounce buffer size between guest memory and the backend.
const CHUNK: usize = 1 << 20;

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

fn range(sector: u64, bytes: u64, capacity: u64) -> Result<u64, RequestError> {
    let err = RequestError::OutOfRange {
        sector,
        bytes,
        capacity,
    };
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(err.clone())?;
    match offset.checked_add(bytes) {
        Some(end) if end <= capacity => Ok(offset),
        _ => Err(err),
    }
}

fn backend(e: storage::BlockError) -> RequestError {
    RequestError::Backend(e.to_string())
}

impl Request {
    /// For a read or write: checks the length is whole sectors and the range is on the disk;
    /// returns the byte offset.
    pub fn check_rw(&self, capacity: u64) -> Result<u64, RequestError> {
        if !self.data_len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::Misaligned {
                len: self.data_len,
                what: "the sector size",
            });
        }
        range(self.sector, self.data_len, capacity)
    }

    /// Copies the data buffers, in order, into `out` (at most `out.len()` bytes).
    pub fn gather(&self, mem: &GuestMemoryMmap, out: &mut [u8]) -> Result<(), RequestError> {
        let mut at = 0usize;
        for &(addr, len) in &self.data {
            let n = (len as usize).min(out.len() - at);
            mem.read_slice(&mut out[at..at + n], addr)
                .map_err(|_| RequestError::Memory(addr.0))?;
            at += n;
        }
        Ok(())
    }

    /// Copies `data`, in order, into the data buffers.
    pub fn scatter(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<(), RequestError> {
        let mut at = 0usize;
        for &(addr, len) in &self.data {
            let n = (len as usize).min(data.len() - at);
            mem.write_slice(&data[at..at + n], addr)
                .map_err(|_| RequestError::Memory(addr.0))?;
            at += n;
        }
        Ok(())
    }

    /// Runs the request; returns the number of bytes written into guest buffers (not counting
    /// the status byte).
    pub fn execute(
        &self,
        mem: &GuestMemoryMmap,
        disk: &mut dyn BlockBackend,
        id: &[u8; ID_BYTES],
    ) -> Result<u32, RequestError> {
        let capacity = disk.size();
        match self.ty {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let offset = self.check_rw(capacity)?;
                if self.ty == VIRTIO_BLK_T_IN {
                    self.read(mem, disk, offset)?;
                    Ok(self.data_len as u32)
                } else {
                    if disk.read_only() {
                        return Err(RequestError::ReadOnly);
                    }
                    self.write(mem, disk, offset)?;
                    Ok(0)
                }
            }
            VIRTIO_BLK_T_FLUSH => disk.flush().map(|()| 0).map_err(backend),
            VIRTIO_BLK_T_GET_ID => self.get_id(mem, id),
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if disk.read_only() {
                    return Err(RequestError::ReadOnly);
                }
                self.segments(mem, disk, capacity)?;
                Ok(0)
            }
            _ => Ok(0),
        }
    }

    fn read(
        &self,
        mem: &GuestMemoryMmap,
        disk: &mut dyn BlockBackend,
        mut offset: u64,
    ) -> Result<(), RequestError> {
        let mut buf = vec![0u8; CHUNK.min(self.data_len as usize)];
        for &(addr, len) in &self.data {
            let mut done = 0u64;
            while done < u64::from(len) {
                let n = (u64::from(len) - done).min(CHUNK as u64) as usize;
                disk.read_at(&mut buf[..n], offset).map_err(backend)?;
                let at = addr.unchecked_add(done);
                mem.write_slice(&buf[..n], at)
                    .map_err(|_| RequestError::Memory(at.0))?;
                done += n as u64;
                offset += n as u64;
            }
        }
        Ok(())
    }

    fn write(
        &self,
        mem: &GuestMemoryMmap,
        disk: &mut dyn BlockBackend,
        mut offset: u64,
    ) -> Result<(), RequestError> {
        let mut buf = vec![0u8; CHUNK.min(self.data_len as usize)];
        for &(addr, len) in &self.data {
            let mut done = 0u64;
            while done < u64::from(len) {
                let n = (u64::from(len) - done).min(CHUNK as u64) as usize;
                let at = addr.unchecked_add(done);
                mem.read_slice(&mut buf[..n], at)
                    .map_err(|_| RequestError::Memory(at.0))?;
                disk.write_at(&buf[..n], offset).map_err(backend)?;
                done += n as u64;
                offset += n as u64;
            }
        }
        Ok(())
    }

    fn get_id(&self, mem: &GuestMemoryMmap, id: &[u8; ID_BYTES]) -> Result<u32, RequestError> {
        let mut left = &id[..];
        let mut written = 0u32;
        for &(addr, len) in &self.data {
            let n = left.len().min(len as usize);
            mem.write_slice(&left[..n], addr)
                .map_err(|_| RequestError::Memory(addr.0))?;
            left = &left[n..];
            written += n as u32;
        }
        Ok(written)
    }

    fn segments(
        &self,
        mem: &GuestMemoryMmap,
        disk: &mut dyn BlockBackend,
        capacity: u64,
    ) -> Result<(), RequestError> {
        for &(addr, len) in &self.data {
            if !len.is_multiple_of(SEGMENT_BYTES) {
                return Err(RequestError::Misaligned {
                    len: len.into(),
                    what: "the 16-byte segment size",
                });
            }
            for i in 0..len / SEGMENT_BYTES {
                let at = addr.unchecked_add(u64::from(i * SEGMENT_BYTES));
                let sector: u64 = mem.read_obj(at).map_err(|_| RequestError::Memory(at.0))?;
                let count: u32 = mem
                    .read_obj(at.unchecked_add(8))
                    .map_err(|_| RequestError::Memory(at.0))?;
                let bytes = u64::from(count) * SECTOR_SIZE;
                let offset = range(sector, bytes, capacity)?;
                if self.ty == VIRTIO_BLK_T_DISCARD {
                    disk.discard(offset, bytes).map_err(backend)?;
                } else {
                    disk.write_zeroes(offset, bytes).map_err(backend)?;
                }
            }
        }
        Ok(())
    }
}

/// Parses and runs one chain; never fails: errors become the status.
pub fn process<I: Iterator<Item = Descriptor>>(
    mem: &GuestMemoryMmap,
    chain: I,
    disk: &mut dyn BlockBackend,
    id: &[u8; ID_BYTES],
) -> (Completion, Option<RequestError>) {
    let descs = match collect(chain) {
        Ok(d) => d,
        Err(e) => {
            let done = Completion {
                status_addr: None,
                status: VIRTIO_BLK_S_IOERR as u8,
                used_len: 0,
            };
            return (done, Some(e));
        }
    };
    let Some(status_addr) = status_address(mem, &descs) else {
        let done = Completion {
            status_addr: None,
            status: VIRTIO_BLK_S_IOERR as u8,
            used_len: 0,
        };
        return (done, Some(RequestError::NoStatus));
    };
    match parse(mem, &descs) {
        Ok(req) => complete(mem, &req, status_addr, disk, id),
        Err(e) => {
            let done = Completion {
                status_addr: Some(status_addr),
                status: VIRTIO_BLK_S_IOERR as u8,
                used_len: 1,
            };
            (done, Some(e))
        }
    }
}

/// Runs a parsed request synchronously; errors become the status.
pub fn complete(
    mem: &GuestMemoryMmap,
    req: &Request,
    status_addr: GuestAddress,
    disk: &mut dyn BlockBackend,
    id: &[u8; ID_BYTES],
) -> (Completion, Option<RequestError>) {
    let known = matches!(
        req.ty,
        VIRTIO_BLK_T_IN
            | VIRTIO_BLK_T_OUT
            | VIRTIO_BLK_T_FLUSH
            | VIRTIO_BLK_T_GET_ID
            | VIRTIO_BLK_T_DISCARD
            | VIRTIO_BLK_T_WRITE_ZEROES
    );
    let mut done = Completion {
        status_addr: Some(status_addr),
        status: VIRTIO_BLK_S_UNSUPP as u8,
        used_len: 1,
    };
    if !known {
        return (done, None);
    }
    match req.execute(mem, disk, id) {
        Ok(n) => {
            done.status = VIRTIO_BLK_S_OK as u8;
            done.used_len = n + 1;
            (done, None)
        }
        Err(e) => {
            done.status = VIRTIO_BLK_S_IOERR as u8;
            (done, Some(e))
        }
    }
}
