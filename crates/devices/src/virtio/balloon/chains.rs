//! Reading the balloon's descriptor chains. Every descriptor is checked (direction, guest
//! memory bounds, total size) before anything is done with the chain; reads go through a
//! fixed-size buffer, so a chain never makes the VMM allocate more than its cap.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap};

use super::control::GuestStats;

/// Most descriptors in one chain.
pub const MAX_DESCRIPTORS: usize = 256;
/// Most bytes of page numbers in one inflate/deflate chain (16,384 pages; Linux sends at most
/// 256 per chain).
pub const MAX_PFN_BYTES: u64 = 64 * 1024;
/// Most bytes of statistics in one chain (409 entries; Linux sends 10).
pub const MAX_STATS_BYTES: u64 = 4096;
/// Size of one statistics entry: le16 tag, le64 value, packed.
pub const STAT_ENTRY: usize = 10;

/// Why a chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A device-writable buffer where the device only reads.
    #[error("a device-writable buffer where a readable one is expected")]
    WrongDirection,
    /// A buffer outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// More data or descriptors than the queue's cap.
    #[error("the chain is longer than this queue accepts")]
    TooLong,
    /// The chain ends with a NEXT flag (a bad index or a loop).
    #[error("the chain is broken (bad next index or a loop)")]
    Broken,
    /// A buffer whose length is not a whole number of entries.
    #[error("a buffer of {0} bytes is not a whole number of entries")]
    Partial(u32),
}

/// What a queue's chains must look like.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Device-writable buffers are accepted (else only device-readable ones).
    pub writable_ok: bool,
    /// Most bytes in all the buffers of a chain.
    pub max_bytes: u64,
    /// Every buffer must be inside guest memory (else the caller checks each one itself).
    pub in_memory: bool,
}

/// Checks `chain` against `rules`. Returns its descriptors.
pub fn descriptors<I: Iterator<Item = Descriptor>>(
    mem: &GuestMemoryMmap,
    chain: I,
    rules: Rules,
) -> Result<Vec<Descriptor>, ChainError> {
    let Rules {
        writable_ok,
        max_bytes,
        in_memory,
    } = rules;
    let mut descs = Vec::new();
    let mut total = 0u64;
    for d in chain {
        if descs.len() >= MAX_DESCRIPTORS {
            return Err(ChainError::TooLong);
        }
        if d.is_write_only() && !writable_ok {
            return Err(ChainError::WrongDirection);
        }
        total += u64::from(d.len());
        if total > max_bytes {
            return Err(ChainError::TooLong);
        }
        if in_memory && !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return Err(ChainError::OutsideMemory {
                addr: d.addr().raw_value(),
                len: d.len(),
            });
        }
        descs.push(d);
    }
    if descs.last().is_some_and(|d| d.has_next()) {
        return Err(ChainError::Broken);
    }
    Ok(descs)
}

/// Calls `f` with every le32 page number of `descs` (checked by [`descriptors`]).
pub fn for_each_pfn(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    mut f: impl FnMut(u32),
) -> Result<(), ChainError> {
    if let Some(d) = descs.iter().find(|d| !d.len().is_multiple_of(4)) {
        return Err(ChainError::Partial(d.len()));
    }
    let mut buf = [0u8; 4096];
    for d in descs {
        let len = d.len() as usize;
        let mut off = 0usize;
        while off < len {
            let n = (len - off).min(buf.len());
            let at = d
                .addr()
                .checked_add(off as u64)
                .ok_or(ChainError::OutsideMemory {
                    addr: d.addr().raw_value(),
                    len: d.len(),
                })?;
            mem.read_slice(&mut buf[..n], at)
                .map_err(|_| ChainError::OutsideMemory {
                    addr: d.addr().raw_value(),
                    len: d.len(),
                })?;
            for pfn in buf[..n].chunks_exact(4) {
                f(u32::from_le_bytes([pfn[0], pfn[1], pfn[2], pfn[3]]));
            }
            off += n;
        }
    }
    Ok(())
}

/// Reads the statistics entries of `descs` into `stats` (unknown tags are skipped); returns
/// the number of entries read. Entries may not straddle buffers.
pub fn read_stats(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    stats: &mut GuestStats,
) -> Result<usize, ChainError> {
    if let Some(d) = descs
        .iter()
        .find(|d| !(d.len() as usize).is_multiple_of(STAT_ENTRY))
    {
        return Err(ChainError::Partial(d.len()));
    }
    let mut entries = Vec::new();
    for d in descs {
        // At most MAX_STATS_BYTES in all (checked by `descriptors`).
        let mut buf = vec![0u8; d.len() as usize];
        mem.read_slice(&mut buf, d.addr())
            .map_err(|_| ChainError::OutsideMemory {
                addr: d.addr().raw_value(),
                len: d.len(),
            })?;
        for e in buf.chunks_exact(STAT_ENTRY) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&e[2..10]);
            entries.push((tag, u64::from_le_bytes(v)));
        }
    }
    for &(tag, value) in &entries {
        if let Some(slot) = stats.values.get_mut(usize::from(tag)) {
            *slot = Some(value);
        }
    }
    Ok(entries.len())
}
