//! Moving one frame between a descriptor chain and a buffer, with every descriptor checked.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};

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
    /// The rx chain is smaller than the frame.
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

/// Gathers a tx chain (driver-readable buffers only) into `out` (cleared first); the frame,
/// header included, is at most [`MAX_FRAME`] bytes.
pub fn tx_gather(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    out.clear();
    let descs = checked(mem, chain, false)?;
    for d in descs {
        let len = d.len() as usize;
        let start = out.len();
        let end = start
            .checked_add(len)
            .filter(|&e| e <= MAX_FRAME)
            .ok_or(FrameError::TxSize { len: start + len })?;
        out.resize(end, 0);
        mem.read_slice(&mut out[start..end], d.addr())
            .map_err(|_| FrameError::OutOfMemory {
                addr: d.addr().0,
                len: d.len(),
            })?;
    }
    if out.len() < HDR_LEN {
        return Err(FrameError::TxSize { len: out.len() });
    }
    Ok(())
}

/// Scatters `frame` (header included) into an rx chain (device-writable buffers only), after
/// setting the header's `num_buffers` to 1; returns the bytes written. Nothing is written when
/// the chain is bad or too small.
pub fn rx_scatter(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    frame: &mut [u8],
) -> Result<u32, FrameError> {
    let descs = checked(mem, chain, true)?;
    let room = descs
        .iter()
        .fold(0usize, |a, d| a.saturating_add(d.len() as usize));
    if room < frame.len() || frame.len() < HDR_LEN || frame.len() > MAX_FRAME {
        return Err(FrameError::TooSmall {
            frame: frame.len(),
            room,
        });
    }
    if let Some(nb) = frame.get_mut(10..12) {
        nb.copy_from_slice(&1u16.to_le_bytes());
    }
    let mut rest: &[u8] = frame;
    for d in descs {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(d.len() as usize);
        let (part, tail) = rest.split_at(n);
        mem.write_slice(part, d.addr())
            .map_err(|_| FrameError::OutOfMemory {
                addr: d.addr().0,
                len: d.len(),
            })?;
        rest = tail;
    }
    Ok(frame.len() as u32)
}
