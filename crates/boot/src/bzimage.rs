//! bzImage: checks on the setup header, then linux-loader copies the protected-mode kernel to
//! [`HIMEM_START`].

use std::fs::File;

use linux_loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::kernel::{check_fits, KernelEntry, KernelError, LoadedKernel};
use crate::layout::HIMEM_START;

/// Oldest boot protocol accepted: 2.12 introduced `xloadflags` (64-bit entry capability).
pub const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// Offset of the 64-bit entry point from the protected-mode kernel's load address.
pub const ENTRY_64_OFFSET: u64 = 0x200;

/// Loads a bzImage whose setup header `hdr` was read from `file` (`len` bytes).
pub(crate) fn load<M: GuestMemoryBackend>(
    mem: &M,
    file: &mut File,
    len: u64,
    hdr: setup_header,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    let version = hdr.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(KernelError::BzImageTooOld { version });
    }
    let (xloadflags, loadflags) = (hdr.xloadflags, hdr.loadflags);
    if xloadflags & XLF_KERNEL_64 == 0 || loadflags & LOADED_HIGH == 0 {
        return Err(KernelError::BzImageNot64Bit {
            xloadflags,
            loadflags,
        });
    }
    // A setup_sects of 0 means 4 (boot protocol); the boot sector comes on top.
    let setup_sects = hdr.setup_sects;
    let sects = if setup_sects == 0 {
        4
    } else {
        u64::from(setup_sects)
    };
    let setup_size = (sects + 1) * 512;
    if setup_size >= len {
        return Err(KernelError::BzImageTruncated {
            setup_sects,
            setup_size,
            len,
        });
    }
    let start = HIMEM_START;
    let end = start.checked_add(len - setup_size);
    let reserved_end = match (end, decompress_end(&hdr)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
    check_fits(start, reserved_end, ram_end)?;
    BzImage::load(mem, Some(GuestAddress(start)), file, None).map_err(KernelError::Loader)?;
    let mut hdr = hdr;
    // Where the protected-mode kernel now is (start fits 32 bits: it is HIMEM_START).
    hdr.code32_start = start as u32;
    Ok(LoadedKernel {
        entry: KernelEntry::BzImage(hdr),
        start,
        end: end.unwrap_or(u64::MAX),
        reserved_end: reserved_end.unwrap_or(u64::MAX),
    })
}

/// End of the buffer the kernel decompresses into when loaded at [`HIMEM_START`]: it starts
/// at the load address rounded up to `kernel_alignment`, but not below `pref_address`
/// (LOAD_PHYSICAL_ADDR), and spans `init_size` bytes. `None` on overflow.
fn decompress_end(hdr: &setup_header) -> Option<u64> {
    let align = u64::from(hdr.kernel_alignment);
    let align = if align.is_power_of_two() { align } else { 1 };
    let base = HIMEM_START
        .checked_next_multiple_of(align)?
        .max(hdr.pref_address);
    base.checked_add(u64::from(hdr.init_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompress_buffer_follows_alignment_and_pref_address() {
        let mut hdr = setup_header {
            kernel_alignment: 0x20_0000,
            pref_address: 0x100_0000,
            init_size: 0x10_0000,
            ..Default::default()
        };
        assert_eq!(decompress_end(&hdr), Some(0x110_0000));
        hdr.pref_address = 0;
        assert_eq!(decompress_end(&hdr), Some(0x30_0000));
        hdr.kernel_alignment = 3; // not a power of two: treated as unaligned
        assert_eq!(decompress_end(&hdr), Some(0x20_0000));
        hdr.pref_address = u64::MAX;
        assert_eq!(decompress_end(&hdr), None);
    }
}
