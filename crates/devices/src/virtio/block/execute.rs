//! Running a parsed virtio-blk request on a [`BlockBackend`]: reads and writes through a bounce
//! buffer, flush, GET_ID, discard and write-zeroes segments; [`process`] and [`complete`] turn
//! every failure into the request's status.

use storage::BlockBackend;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    collect, parse, status_address, Completion, Request, RequestError, ID_BYTES, SECTOR_SIZE,
};

/// Size of a discard / write-zeroes segment.
const SEGMENT_BYTES: u32 = 16;
/// Bounce buffer size between guest memory and the backend.
const CHUNK: usize = 1 << 20;

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
