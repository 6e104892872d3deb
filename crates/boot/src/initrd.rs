//! The initrd: page aligned, as high as possible in the RAM below the 32-bit hole, under the
//! kernel's `initrd_addr_max` and above everything the kernel needs.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout::PAGE_SIZE;

/// Why the initrd could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// Reading the initrd file failed.
    #[error("cannot read the initrd file: {0}")]
    Io(#[source] io::Error),
    /// The initrd file is empty.
    #[error("the initrd file is empty")]
    Empty,
    /// No page-aligned place between the kernel and the limit holds the initrd.
    #[error("the initrd ({size:#x} bytes) does not fit between {lowest:#x} and {limit:#x}")]
    DoesNotFit {
        /// initrd size.
        size: u64,
        /// Lowest address allowed (end of the kernel).
        lowest: u64,
        /// Highest end allowed (RAM end or the kernel's `initrd_addr_max` + 1).
        limit: u64,
    },
    /// Copying into guest memory failed.
    #[error("cannot copy the initrd to guest memory at {addr:#x}: {source}")]
    Write {
        /// Destination address.
        addr: u64,
        /// The memory error.
        source: GuestMemoryError,
    },
}

/// Where the initrd went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest address (page aligned).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Chooses the highest page-aligned address for `size` bytes ending at or below `limit` and
/// starting at or above `lowest`.
pub fn place(size: u64, lowest: u64, limit: u64) -> Result<u64, InitrdError> {
    let err = InitrdError::DoesNotFit {
        size,
        lowest,
        limit,
    };
    let top = limit.checked_sub(size).ok_or(err)?;
    let addr = top & !(PAGE_SIZE - 1);
    if addr < lowest {
        return Err(InitrdError::DoesNotFit {
            size,
            lowest,
            limit,
        });
    }
    Ok(addr)
}

/// Copies `file` into guest memory at the place [`place`] chooses.
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    file: &mut File,
    lowest: u64,
    limit: u64,
) -> Result<InitrdPlacement, InitrdError> {
    let size = file.seek(SeekFrom::End(0)).map_err(InitrdError::Io)?;
    if size == 0 {
        return Err(InitrdError::Empty);
    }
    let addr = place(size, lowest, limit)?;
    file.rewind().map_err(InitrdError::Io)?;
    // size <= limit <= 4 GiB here, so it fits a usize on x86-64.
    let len = usize::try_from(size).map_err(|_| InitrdError::DoesNotFit {
        size,
        lowest,
        limit,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|source| InitrdError::Write { addr, source })?;
    Ok(InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_page_aligned_and_below_limit() {
        let addr = place(0x1801, 0x100_0000, 0x800_0000).unwrap();
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + 0x1801 <= 0x800_0000);
        assert!(
            addr + 0x1801 + PAGE_SIZE > 0x800_0000,
            "as high as possible"
        );
    }

    #[test]
    fn placement_fails_below_lowest_or_past_zero() {
        assert!(matches!(
            place(0x10_0000, 0x7f8_0000, 0x800_0000),
            Err(InitrdError::DoesNotFit { .. })
        ));
        assert!(matches!(
            place(2, 0, 1),
            Err(InitrdError::DoesNotFit { .. })
        ));
        assert_eq!(place(0x1000, 0x7ff_f000, 0x800_0000).unwrap(), 0x7ff_f000);
    }
}
