//! Kernel image detection and loading (bzImage or ELF vmlinux) through linux-loader, with the
//! checks linux-loader leaves to its caller: format, truncation, and whether the image fits in
//! guest RAM above 1 MiB.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use linux_loader::bootparam::setup_header;
use vm_memory::{ByteValued, GuestMemoryBackend};

/// The 'HdrS' magic of a bzImage setup header (at file offset 0x202).
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// File offset of the "HdrS" magic in a bzImage.
pub const HDRS_MAGIC_OFFSET: u64 = 0x202;
/// File offset of the setup header in a bzImage.
pub const SETUP_HEADER_OFFSET: u64 = 0x1f1;
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// Why the kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Reading or seeking the kernel file failed.
    #[error("cannot read the kernel file while {what}: {source}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// The kernel file is empty.
    #[error("the kernel file is empty")]
    Empty,
    /// Neither an ELF magic at offset 0 nor a "HdrS" setup header at 0x202.
    #[error(
        "the kernel ({len} bytes) is neither a bzImage (no \"HdrS\" at 0x202) nor an ELF file"
    )]
    UnknownFormat {
        /// File length.
        len: u64,
    },
    /// The bzImage boot protocol is older than 2.12 (no 64-bit entry information).
    #[error("bzImage boot protocol {version:#x} is older than the 2.12 (0x20c) this loader needs")]
    BzImageTooOld {
        /// The header's `version`.
        version: u16,
    },
    /// The bzImage has no 64-bit entry point or must be loaded low.
    #[error("bzImage cannot be booted by the 64-bit protocol (xloadflags {xloadflags:#x}, loadflags {loadflags:#x})")]
    BzImageNot64Bit {
        /// The header's `xloadflags`.
        xloadflags: u16,
        /// The header's `loadflags`.
        loadflags: u8,
    },
    /// The setup sectors run to or past the end of the file.
    #[error("bzImage is truncated: {setup_sects} setup sectors ({setup_size} bytes) but the file has {len} bytes")]
    BzImageTruncated {
        /// The header's `setup_sects`.
        setup_sects: u8,
        /// Real-mode part size in bytes.
        setup_size: u64,
        /// File length.
        len: u64,
    },
    /// The ELF file is not a little-endian x86-64 executable this loader understands.
    #[error("unsupported ELF kernel: {reason}")]
    ElfUnsupported {
        /// What is wrong.
        reason: &'static str,
    },
    /// A header or segment lies past the end of the file.
    #[error("kernel file is truncated: {what} at offset {offset:#x} needs {len:#x} bytes, file has {file_len:#x}")]
    Truncated {
        /// Which part.
        what: &'static str,
        /// File offset.
        offset: u64,
        /// Needed length.
        len: u64,
        /// File length.
        file_len: u64,
    },
    /// An ELF segment would be loaded below 1 MiB, over the boot structures.
    #[error(
        "ELF segment at physical address {paddr:#x} is below 1 MiB (boot structures live there)"
    )]
    ElfSegmentTooLow {
        /// The segment's physical address.
        paddr: u64,
    },
    /// An entry point outside the loaded segments.
    #[error("ELF entry point {entry:#x} is outside the loaded kernel {start:#x}..{end:#x}")]
    ElfBadEntry {
        /// The entry point.
        entry: u64,
        /// Start of the loaded image.
        start: u64,
        /// End of the loaded image.
        end: u64,
    },
    /// The kernel does not fit in the guest RAM that starts at 1 MiB.
    #[error("the kernel needs guest memory {start:#x}..{end:#x} but RAM from 1 MiB ends at {ram_end:#x}")]
    DoesNotFit {
        /// First address needed.
        start: u64,
        /// End (exclusive) of what is needed; `u64::MAX` on overflow.
        end: u64,
        /// End of the RAM that holds the kernel.
        ram_end: u64,
    },
    /// linux-loader refused or failed to copy the image.
    #[error("loading the kernel image failed: {0}")]
    Loader(#[source] linux_loader::loader::Error),
    /// Zeroing the kernel's bss failed.
    #[error("cannot zero the kernel bss at {addr:#x}: {source}")]
    ZeroBss {
        /// Address being zeroed.
        addr: u64,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// How a loaded kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelEntry {
    /// bzImage: 64-bit entry at load address + 0x200, with the image's setup header.
    BzImage(setup_header),
    /// ELF without a PVH note: 64-bit entry at `e_entry` with a synthesised setup header.
    Elf64(u64),
    /// ELF with a PVH note: 32-bit entry at the note's address.
    Pvh(u64),
}

/// Where a kernel landed and how to enter it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadedKernel {
    /// Entry information.
    pub entry: KernelEntry,
    /// Lowest address of the image.
    pub start: u64,
    /// End of the image (exclusive).
    pub end: u64,
    /// End of all memory the kernel needs before it sets up its own allocator (bzImage:
    /// decompression buffer); the initrd must go above it.
    pub reserved_end: u64,
}

/// Detects the format of `file` and loads it into `mem`; `ram_end` is the end of the RAM that
/// starts at 1 MiB.
pub fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    file: &mut File,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|source| KernelError::Io {
            what: "finding its size",
            source,
        })?;
    if len == 0 {
        return Err(KernelError::Empty);
    }
    if len >= ELF_MAGIC.len() as u64 {
        let mut magic = [0u8; 4];
        read_at(file, 0, &mut magic, len, "magic")?;
        if magic == ELF_MAGIC {
            return crate::elf::load(mem, file, len, ram_end);
        }
    }
    if let Some(hdr) = read_setup_header(file, len)? {
        return crate::bzimage::load(mem, file, len, hdr, ram_end);
    }
    Err(KernelError::UnknownFormat { len })
}

fn read_setup_header(file: &mut File, len: u64) -> Result<Option<setup_header>, KernelError> {
    let size = std::mem::size_of::<setup_header>() as u64;
    if len < SETUP_HEADER_OFFSET + size {
        return Ok(None);
    }
    let mut hdr = setup_header::default();
    read_at(
        file,
        SETUP_HEADER_OFFSET,
        hdr.as_mut_slice(),
        len,
        "setup header",
    )?;
    if hdr.header != HDRS_MAGIC {
        return Ok(None);
    }
    // The header ends at 0x202 + the byte at 0x201 (the jump's displacement); what follows is
    // setup code, not header fields of this (older) protocol version: clear it.
    let jump = hdr.jump;
    let end = HDRS_MAGIC_OFFSET + u64::from(jump >> 8) - SETUP_HEADER_OFFSET;
    if let Some(rest) = hdr
        .as_mut_slice()
        .get_mut(usize::try_from(end).unwrap_or(usize::MAX)..)
    {
        rest.fill(0);
    }
    Ok(Some(hdr))
}

/// Reads exactly `buf.len()` bytes at `offset`, with a truncation error if the file is short.
pub(crate) fn read_at(
    file: &mut File,
    offset: u64,
    buf: &mut [u8],
    file_len: u64,
    what: &'static str,
) -> Result<(), KernelError> {
    let need = buf.len() as u64;
    if offset.checked_add(need).is_none_or(|end| end > file_len) {
        return Err(KernelError::Truncated {
            what,
            offset,
            len: need,
            file_len,
        });
    }
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(|source| KernelError::Io { what, source })
}

/// Checks that `start..end` lies in the RAM `HIMEM_START..ram_end`.
pub(crate) fn check_fits(start: u64, end: Option<u64>, ram_end: u64) -> Result<(), KernelError> {
    match end {
        Some(end) if start >= crate::layout::HIMEM_START && end <= ram_end => Ok(()),
        _ => Err(KernelError::DoesNotFit {
            start,
            end: end.unwrap_or(u64::MAX),
            ram_end,
        }),
    }
}
