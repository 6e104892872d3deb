//! A descriptor chain as the guest memory it names, with every descriptor checked, so the
//! backend reads and writes a frame in guest memory directly (no copy through a buffer).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::{HDR_LEN, MAX_FRAME};

/// Most descriptors in one chain (a longer chain is a loop or hostile).
const MAX_DESCS: usize = 1024;

/// Why a chain could not carry a frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A descriptor has the wrong direction for the queue.
    #[error("descriptor at {addr:#x} (len {len}) has the wrong direction")]
    Direction {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A buffer lies outside guest memory.
    #[error("buffer at {addr:#x} (len {len}) is outside guest memory")]
    OutOfMemory {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The chain is too long or ends with a dangling link.
    #[error("broken descriptor chain (more than {MAX_DESCS} descriptors or dangling link)")]
    Broken,
    /// A tx frame larger than [`MAX_FRAME`] or shorter than the header.
    #[error("tx frame of {len} bytes is outside {HDR_LEN}..={MAX_FRAME}")]
    TxSize {
        /// Its length (so far).
        len: usize,
    },
    /// The rx chain is smaller than the frame (or than the header).
    #[error("rx frame of {frame} bytes does not fit in buffers of {room} bytes")]
    TooSmall {
        /// Frame length.
        frame: usize,
        /// Room in the chain.
        room: usize,
    },
}

fn checked(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    write_only: bool,
) -> Result<Vec<Descriptor>, FrameError> {
    let mut descs = Vec::new();
    for d in chain {
        let (addr, len) = (d.addr().0, d.len());
        if d.is_write_only() != write_only {
            return Err(FrameError::Direction { addr, len });
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), len as usize) {
            return Err(FrameError::OutOfMemory { addr, len });
        }
        if descs.len() >= MAX_DESCS {
            return Err(FrameError::Broken);
        }
        descs.push(d);
    }
    // The chain iterator stops early at a bad link: the last descriptor then still has NEXT.
    if descs.last().is_none_or(|d| d.has_next()) {
        return Err(FrameError::Broken);
    }
    Ok(descs)
}

/// The guest memory of checked descriptors, in order; a buffer that crosses from one region
/// of guest memory into the next becomes two slices.
fn slices<'m>(
    mem: &'m GuestMemoryMmap,
    descs: &[Descriptor],
) -> Result<Vec<VolatileSlice<'m>>, FrameError> {
    let mut out = Vec::with_capacity(descs.len());
    for d in descs {
        let bad = || FrameError::OutOfMemory {
            addr: d.addr().0,
            len: d.len(),
        };
        for s in mem.get_slices(d.addr(), d.len() as usize) {
            out.push(s.map_err(|_| bad())?);
        }
    }
    // One iovec per slice: readv/writev take at most 1024.
    if out.len() > MAX_DESCS {
        return Err(FrameError::Broken);
    }
    Ok(out)
}

/// A tx chain (driver-readable buffers only) as the guest memory holding its frame, header
/// included, which is [`HDR_LEN`]..=[`MAX_FRAME`] bytes. Returns the slices and the length.
pub fn tx_slices(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
) -> Result<(Vec<VolatileSlice<'_>>, usize), FrameError> {
    let descs = checked(mem, chain, false)?;
    let len = descs
        .iter()
        .fold(0usize, |a, d| a.saturating_add(d.len() as usize));
    if !(HDR_LEN..=MAX_FRAME).contains(&len) {
        return Err(FrameError::TxSize { len });
    }
    Ok((slices(mem, &descs)?, len))
}

/// An rx chain taken from the ring: its head and its checked device-writable buffers, at least
/// [`HDR_LEN`] bytes together. It names guest memory only by address, so it can wait for a
/// frame across calls.
#[derive(Debug)]
pub struct RxChain {
    /// The chain's head index.
    pub head: u16,
    /// The buffers' total length.
    pub room: usize,
    parts: Vec<(GuestAddress, usize)>,
}

/// Checks an rx chain and describes its buffers; nothing is written.
pub fn rx_chain(
    mem: &GuestMemoryMmap,
    head: u16,
    chain: impl Iterator<Item = Descriptor>,
) -> Result<RxChain, FrameError> {
    let descs = checked(mem, chain, true)?;
    let room = descs
        .iter()
        .fold(0usize, |a, d| a.saturating_add(d.len() as usize));
    if room < HDR_LEN {
        return Err(FrameError::TooSmall {
            frame: HDR_LEN,
            room,
        });
    }
    // The buffers must also be describable as iovecs (at most MAX_DESCS pieces).
    slices(mem, &descs)?;
    let parts = descs.iter().map(|d| (d.addr(), d.len() as usize)).collect();
    Ok(RxChain { head, room, parts })
}

impl RxChain {
    /// Appends to `out` the guest memory of the chain's first `limit` bytes (at most its
    /// room); returns the bytes appended.
    pub fn slices_into<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
        limit: usize,
        out: &mut Vec<VolatileSlice<'m>>,
    ) -> Result<usize, FrameError> {
        let mut left = limit.min(self.room);
        for &(addr, len) in &self.parts {
            if left == 0 {
                break;
            }
            let n = len.min(left);
            for s in mem.get_slices(addr, n) {
                out.push(s.map_err(|_| FrameError::OutOfMemory {
                    addr: addr.0,
                    len: len as u32,
                })?);
            }
            left -= n;
        }
        Ok(limit.min(self.room) - left)
    }

    /// Copies `data` (at most the room) into the chain's buffers.
    pub fn write(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<(), FrameError> {
        let mut rest = data;
        for &(addr, len) in &self.parts {
            if rest.is_empty() {
                break;
            }
            let (part, tail) = rest.split_at(len.min(rest.len()));
            mem.write_slice(part, addr)
                .map_err(|_| FrameError::OutOfMemory {
                    addr: addr.0,
                    len: len as u32,
                })?;
            rest = tail;
        }
        Ok(())
    }

    /// Sets the `num_buffers` field of the header at the start of the chain to `n` (the chains
    /// the frame spans; 1 without mergeable buffers). The backend leaves those bytes alone.
    pub fn set_num_buffers(&self, mem: &GuestMemoryMmap, n: u16) -> Result<(), FrameError> {
        let value = n.to_le_bytes();
        let mut at = 0usize;
        for &(addr, len) in &self.parts {
            for (i, b) in value.iter().enumerate() {
                let off = 10 + i;
                if (at..at + len).contains(&off) {
                    let a = addr
                        .checked_add((off - at) as u64)
                        .ok_or(FrameError::Broken)?;
                    mem.write_obj(*b, a)
                        .map_err(|_| FrameError::OutOfMemory { addr: a.0, len: 1 })?;
                }
            }
            at += len;
            if at >= HDR_LEN {
                break;
            }
        }
        Ok(())
    }
}
