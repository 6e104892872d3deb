//! The vsock packet: its 44-byte little-endian header, and moving packets between descriptor
//! chains and buffers with every descriptor and header field the guest controls checked.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap};

/// Size of the packet header (`struct virtio_vsock_hdr`).
pub const HDR_LEN: usize = 44;
/// The host's CID (the peer of every guest connection).
pub const HOST_CID: u64 = 2;
/// Socket type: stream (the only one served).
pub const TYPE_STREAM: u16 = 1;
/// Largest payload of one packet, either way.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Most descriptors in one chain (a longer chain is a loop or hostile).
const MAX_DESCS: usize = 256;

/// Packet operations.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or aborted.
    pub const RST: u16 = 3;
    /// The sender stops receiving and/or sending (flags).
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's buf_alloc / fwd_cnt changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// The sender asks for a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation (see [`op`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

impl Header {
    /// Decodes a header.
    pub fn parse(b: &[u8; HDR_LEN]) -> Self {
        Header {
            src_cid: u64::from_le_bytes(le(b, 0)),
            dst_cid: u64::from_le_bytes(le(b, 8)),
            src_port: u32::from_le_bytes(le(b, 16)),
            dst_port: u32::from_le_bytes(le(b, 20)),
            len: u32::from_le_bytes(le(b, 24)),
            type_: u16::from_le_bytes(le(b, 28)),
            op: u16::from_le_bytes(le(b, 30)),
            flags: u32::from_le_bytes(le(b, 32)),
            buf_alloc: u32::from_le_bytes(le(b, 36)),
            fwd_cnt: u32::from_le_bytes(le(b, 40)),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The reset that answers this (guest) packet: ports swapped, from the host.
    pub fn reset_reply(&self) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }
}

/// Why a chain could not carry a packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
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
    /// The chain is shorter than a header.
    #[error("chain of {len} bytes is shorter than the {HDR_LEN}-byte header")]
    ShortHeader {
        /// Bytes in the chain.
        len: usize,
    },
    /// The header's length is above [`MAX_PAYLOAD`].
    #[error("payload length {len} is above {MAX_PAYLOAD}")]
    TooLong {
        /// The length in the header.
        len: u32,
    },
    /// The header's length is more than the chain holds.
    #[error("payload length {len} is beyond the {room} bytes of the chain")]
    BeyondBuffers {
        /// The length in the header.
        len: u32,
        /// Payload bytes in the chain.
        room: usize,
    },
    /// The source CID is not the guest's.
    #[error("source CID {cid} is not the guest's")]
    SrcCid {
        /// The CID in the header.
        cid: u64,
    },
    /// The destination CID is not the host's.
    #[error("destination CID {cid} is not the host (2)")]
    DstCid {
        /// The CID in the header.
        cid: u64,
    },
}

/// Collects a chain's descriptors, all in the direction `write_only`, inside guest memory.
pub fn checked_chain(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    write_only: bool,
) -> Result<Vec<Descriptor>, PacketError> {
    let mut descs = Vec::new();
    for d in chain {
        let (addr, len) = (d.addr().0, d.len());
        if d.is_write_only() != write_only {
            return Err(PacketError::Direction { addr, len });
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), len as usize) {
            return Err(PacketError::OutOfMemory { addr, len });
        }
        if descs.len() >= MAX_DESCS {
            return Err(PacketError::Broken);
        }
        descs.push(d);
    }
    // The chain iterator stops early at a bad link: the last descriptor then still has NEXT.
    if descs.last().is_none_or(|d| d.has_next()) {
        return Err(PacketError::Broken);
    }
    Ok(descs)
}

/// Total bytes of `descs`.
pub fn chain_len(descs: &[Descriptor]) -> usize {
    descs
        .iter()
        .fold(0usize, |a, d| a.saturating_add(d.len() as usize))
}

/// Copies `out.len()` bytes from offset `skip` of the chain's concatenated buffers.
fn gather(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    mut skip: usize,
    out: &mut [u8],
) -> Result<(), PacketError> {
    let mut done = 0;
    for d in descs {
        if done == out.len() {
            break;
        }
        let len = d.len() as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len() - done);
        let oom = PacketError::OutOfMemory {
            addr: d.addr().0,
            len: d.len(),
        };
        let at = d.addr().checked_add(skip as u64).ok_or(oom.clone())?;
        mem.read_slice(&mut out[done..done + n], at)
            .map_err(|_| oom)?;
        done += n;
        skip = 0;
    }
    Ok(())
}

/// Reads a tx chain (driver-readable buffers only): returns its header, checked against the
/// guest's `guest_cid`, and puts the payload (`len` bytes) in `payload`.
pub fn read_tx(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    guest_cid: u64,
    payload: &mut Vec<u8>,
) -> Result<Header, PacketError> {
    payload.clear();
    let descs = checked_chain(mem, chain, false)?;
    let total = chain_len(&descs);
    if total < HDR_LEN {
        return Err(PacketError::ShortHeader { len: total });
    }
    let mut raw = [0u8; HDR_LEN];
    gather(mem, &descs, 0, &mut raw)?;
    let hdr = Header::parse(&raw);
    if hdr.src_cid != guest_cid {
        return Err(PacketError::SrcCid { cid: hdr.src_cid });
    }
    if hdr.dst_cid != HOST_CID {
        return Err(PacketError::DstCid { cid: hdr.dst_cid });
    }
    if hdr.len > MAX_PAYLOAD {
        return Err(PacketError::TooLong { len: hdr.len });
    }
    let room = total - HDR_LEN;
    if hdr.len as usize > room {
        return Err(PacketError::BeyondBuffers { len: hdr.len, room });
    }
    payload.resize(hdr.len as usize, 0);
    gather(mem, &descs, HDR_LEN, payload)?;
    Ok(hdr)
}

/// Writes `hdr` (whose `len` is `payload.len()`) and `payload` into the checked rx buffers
/// `descs`, which hold at least that much; returns the bytes written.
pub fn write_rx(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    hdr: &Header,
    payload: &[u8],
) -> Result<u32, PacketError> {
    let raw = hdr.to_bytes();
    let total = HDR_LEN + payload.len();
    if chain_len(descs) < total {
        return Err(PacketError::BeyondBuffers {
            len: payload.len() as u32,
            room: chain_len(descs).saturating_sub(HDR_LEN),
        });
    }
    let mut off = 0usize;
    for d in descs {
        if off == total {
            break;
        }
        let mut at = d.addr();
        let mut left = d.len() as usize;
        while left > 0 && off < total {
            let src = if off < HDR_LEN {
                &raw[off..]
            } else {
                &payload[off - HDR_LEN..]
            };
            let n = src.len().min(left);
            let oom = PacketError::OutOfMemory {
                addr: d.addr().0,
                len: d.len(),
            };
            mem.write_slice(&src[..n], at).map_err(|_| oom.clone())?;
            at = at.checked_add(n as u64).ok_or(oom)?;
            left -= n;
            off += n;
        }
    }
    Ok(total as u32)
}

#[cfg(test)]
#[path = "packet_tests.rs"]
mod tests;
