//! Giving guest pages back to the host.
//!
//! Guest RAM is a memfd mapped shared: `madvise(MADV_DONTNEED)` on a shared mapping only drops
//! the page-table entries, the pages stay in the file. The pages are freed by punching a hole
//! in the file (`fallocate(PUNCH_HOLE | KEEP_SIZE)`) at the region's file offset; they read back
//! as zeros and are allocated again when the guest touches them. A region without a file (the
//! anonymous memory of unit tests and fuzzing) is private, where `MADV_DONTNEED` does free.

use std::os::fd::AsRawFd;

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The balloon's page size (VIRTIO_BALLOON_PFN_SHIFT 12), whatever the guest's page size.
pub const PAGE_SIZE: u64 = 4096;

/// Why a range could not be released.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Some of the range is not guest RAM.
    #[error("{addr:#x}+{len:#x} is not inside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// fallocate or madvise failed.
    #[error("releasing {addr:#x}+{len:#x}: {source}")]
    Os {
        /// Guest address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Whether `[addr, addr + len)` is entirely guest RAM (possibly over adjacent regions).
pub fn in_memory(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    len > 0
        && usize::try_from(len)
            .is_ok_and(|l| GuestMemoryBackend::check_range(mem, GuestAddress(addr), l))
}

/// Total guest RAM in bytes.
pub fn guest_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Releases `[addr, addr + len)`, which must be page aligned and inside guest memory; a range
/// over several regions is released region by region.
pub fn release(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<(), ReleaseError> {
    let outside = || ReleaseError::OutsideMemory { addr, len };
    if !in_memory(mem, addr, len)
        || !addr.is_multiple_of(PAGE_SIZE)
        || !len.is_multiple_of(PAGE_SIZE)
    {
        return Err(outside());
    }
    let mut at = addr;
    let end = addr + len; // No overflow: check_range accepted the range.
    while at < end {
        let region = mem.find_region(GuestAddress(at)).ok_or_else(outside)?;
        let rel = at - region.start_addr().raw_value();
        let n = (region.len() - rel).min(end - at);
        release_in_region(region, rel, n).map_err(|source| ReleaseError::Os {
            addr: at,
            len: n,
            source,
        })?;
        at += n;
    }
    Ok(())
}

fn release_in_region(
    region: &vm_memory::GuestRegionMmap,
    rel: u64,
    len: u64,
) -> std::io::Result<()> {
    if let Some(fo) = region.file_offset() {
        let off = fo
            .start()
            .checked_add(rel)
            .and_then(|o| i64::try_from(o).ok())
            .ok_or_else(|| std::io::Error::other("file offset overflows"))?;
        let n = i64::try_from(len).map_err(|_| std::io::Error::other("length overflows"))?;
        // SAFETY: fallocate on a descriptor we hold open; punching a hole changes only the
        // file's contents (they read back as zeros), never the mapping, so guest memory stays
        // valid for every user of it.
        let r = unsafe {
            libc::fallocate(
                fo.file().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        return if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
    }
    let host = region
        .get_host_address(vm_memory::MemoryRegionAddress(rel))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let n = usize::try_from(len).map_err(|_| std::io::Error::other("length overflows"))?;
    // SAFETY: `host..host + n` lies inside the region's private anonymous mapping (checked by
    // the caller through find_region and the region length); MADV_DONTNEED on it makes the
    // pages read back as zeros, which is what the guest gave them up for.
    let r = unsafe { libc::madvise(host.cast(), n, libc::MADV_DONTNEED) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Coalesces page frame numbers into runs of consecutive pages and releases each run.
#[derive(Debug, Default)]
pub struct PfnRuns {
    run: Option<(u64, u64)>,
}

impl PfnRuns {
    /// Adds `pfn`; returns a finished run `(first pfn, pages)` when `pfn` does not extend it.
    pub fn push(&mut self, pfn: u64) -> Option<(u64, u64)> {
        match &mut self.run {
            Some((start, n)) if *start + *n == pfn => {
                *n += 1;
                None
            }
            run => run.replace((pfn, 1)),
        }
    }

    /// The last run, if any.
    pub fn finish(&mut self) -> Option<(u64, u64)> {
        self.run.take()
    }
}

/// The page-aligned part of `[addr, addr + len)`, as (address, length); None when empty or
/// when the range wraps.
pub fn inner_pages(addr: u64, len: u64) -> Option<(u64, u64)> {
    let end = addr.checked_add(len)?;
    let start = addr.checked_next_multiple_of(PAGE_SIZE)?;
    let end = end - end % PAGE_SIZE;
    (end > start).then(|| (start, end - start))
}
