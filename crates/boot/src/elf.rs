//! ELF vmlinux: the program headers are checked here (class, machine, bounds, placement above
//! 1 MiB and inside RAM), then linux-loader copies the segments and finds the PVH note.
//!
//! With a Xen PVH note the kernel is entered by PVH. Without one it is entered at `e_entry`
//! by the Linux 64-bit boot protocol with a synthesised zero page (as Firecracker boots a
//! vmlinux); that path is unit-tested only, no end-to-end test kernel lacks the note.

use std::fs::File;

use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Phdr, EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64, PT_LOAD, PT_NOTE,
};
use linux_loader::loader::{elf::Elf, elf::PvhBootCapability, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::kernel::{check_fits, read_at, KernelEntry, KernelError, LoadedKernel};
use crate::layout::HIMEM_START;

/// Most program headers accepted (a vmlinux has about five).
pub const MAX_PROGRAM_HEADERS: u16 = 64;

/// Loads an ELF kernel from `file` (`len` bytes).
pub(crate) fn load<M: GuestMemoryBackend>(
    mem: &M,
    file: &mut File,
    len: u64,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    let mut ehdr = Elf64_Ehdr::default();
    read_at(file, 0, ehdr.as_mut_slice(), len, "ELF header")?;
    let phdrs = read_program_headers(file, &ehdr, len)?;
    let (start, end) = check_segments(&phdrs, len, ram_end)?;
    let result =
        Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(KernelError::Loader)?;
    zero_bss(mem, &phdrs)?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => KernelEntry::Pvh(addr.0),
        _ => KernelEntry::Elf64(ehdr.e_entry),
    };
    let entry_addr = match entry {
        KernelEntry::Pvh(a) | KernelEntry::Elf64(a) => a,
        KernelEntry::BzImage(_) => start,
    };
    if entry_addr < start || entry_addr >= end {
        return Err(KernelError::ElfBadEntry {
            entry: entry_addr,
            start,
            end,
        });
    }
    Ok(LoadedKernel {
        entry,
        start,
        end,
        reserved_end: end,
    })
}

fn read_program_headers(
    file: &mut File,
    ehdr: &Elf64_Ehdr,
    len: u64,
) -> Result<Vec<Elf64_Phdr>, KernelError> {
    let unsupported = |reason| Err(KernelError::ElfUnsupported { reason });
    if ehdr.e_ident[EI_CLASS] != ELFCLASS64 {
        return unsupported("not a 64-bit ELF file");
    }
    if ehdr.e_ident[EI_DATA] != ELFDATA2LSB {
        return unsupported("not little-endian");
    }
    if ehdr.e_machine != EM_X86_64 {
        return unsupported("not an x86-64 executable");
    }
    let entsize = std::mem::size_of::<Elf64_Phdr>();
    if usize::from(ehdr.e_phentsize) != entsize {
        return unsupported("program header entry size is not 56");
    }
    if ehdr.e_phnum == 0 || ehdr.e_phnum > MAX_PROGRAM_HEADERS {
        return unsupported("no program headers, or more than 64");
    }
    if ehdr.e_phoff < std::mem::size_of::<Elf64_Ehdr>() as u64 {
        return unsupported("program headers overlap the ELF header");
    }
    let mut phdrs = Vec::with_capacity(usize::from(ehdr.e_phnum));
    for i in 0..u64::from(ehdr.e_phnum) {
        let mut phdr = Elf64_Phdr::default();
        // i < 64 and entsize = 56; a saturated offset fails read_at's bounds check.
        let offset = ehdr.e_phoff.saturating_add(i * entsize as u64);
        read_at(file, offset, phdr.as_mut_slice(), len, "program header")?;
        phdrs.push(phdr);
    }
    Ok(phdrs)
}

/// Checks every PT_LOAD/PT_NOTE segment against the file and RAM; returns the image span.
fn check_segments(
    phdrs: &[Elf64_Phdr],
    file_len: u64,
    ram_end: u64,
) -> Result<(u64, u64), KernelError> {
    let mut span: Option<(u64, u64)> = None;
    for p in phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD || p.p_type == PT_NOTE)
    {
        if p.p_offset
            .checked_add(p.p_filesz)
            .is_none_or(|e| e > file_len)
        {
            let what = if p.p_type == PT_LOAD {
                "PT_LOAD segment"
            } else {
                "PT_NOTE segment"
            };
            return Err(KernelError::Truncated {
                what,
                offset: p.p_offset,
                len: p.p_filesz,
                file_len,
            });
        }
        if p.p_type != PT_LOAD || p.p_memsz == 0 {
            continue;
        }
        if p.p_filesz > p.p_memsz {
            return Err(KernelError::ElfUnsupported {
                reason: "segment file size exceeds its memory size",
            });
        }
        if p.p_paddr < HIMEM_START {
            return Err(KernelError::ElfSegmentTooLow { paddr: p.p_paddr });
        }
        let end = p.p_paddr.checked_add(p.p_memsz);
        check_fits(p.p_paddr, end, ram_end)?;
        let end = end.unwrap_or(u64::MAX);
        span = Some(match span {
            None => (p.p_paddr, end),
            Some((s, e)) => (s.min(p.p_paddr), e.max(end)),
        });
    }
    span.ok_or(KernelError::ElfUnsupported {
        reason: "no loadable segment",
    })
}

/// Zeroes the part of each segment past its file contents (bss), which linux-loader leaves
/// as it was (it matters when guest memory is reused, e.g. on reboot).
fn zero_bss<M: GuestMemoryBackend>(mem: &M, phdrs: &[Elf64_Phdr]) -> Result<(), KernelError> {
    const CHUNK: u64 = 64 * 1024;
    let zeros = [0u8; CHUNK as usize];
    for p in phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz > p.p_filesz)
    {
        // Bounds were checked by check_segments: paddr + memsz does not overflow.
        let mut addr = p.p_paddr + p.p_filesz;
        let end = p.p_paddr + p.p_memsz;
        while addr < end {
            let n = (end - addr).min(CHUNK) as usize;
            mem.write_slice(&zeros[..n], GuestAddress(addr))
                .map_err(|source| KernelError::ZeroBss { addr, source })?;
            addr += n as u64;
        }
    }
    Ok(())
}
