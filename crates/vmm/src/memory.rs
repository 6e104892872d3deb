//! Guest RAM: one memfd, mapped shared, split around the 32-bit MMIO hole.
//!
//! A memfd (not anonymous memory) so that snapshots can save it, the balloon can punch holes in
//! it, and vhost-user back-ends can map it later.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::Error;

/// The smallest guest thinvm will build: Linux needs some room to decompress itself.
pub const MIN_MEMORY: u64 = 16 << 20;

/// Creates guest RAM of `size` bytes.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, Error> {
    if size < MIN_MEMORY {
        return Err(Error::MemoryTooSmall {
            size,
            min: MIN_MEMORY,
        });
    }
    if !size.is_multiple_of(4096) {
        return Err(Error::MemoryNotAligned(size));
    }
    check_host_memory(size)?;
    let name = c"thinvm-guest-ram";
    let file = memfd(name)?;
    file.set_len(size).map_err(Error::GuestMemory)?;
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (addr, len) in boot::layout::guest_ram_ranges(size) {
        ranges.push((
            addr,
            len,
            Some(FileOffset::new(
                file.try_clone().map_err(Error::GuestMemory)?,
                offset,
            )),
        ));
        offset += len as u64;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|e| Error::MapMemory(e.to_string()))
}

fn memfd(name: &CStr) -> Result<File, Error> {
    // SAFETY: `name` is a valid NUL-terminated string; the flags are plain constants.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::GuestMemory(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Refuses a guest larger than the host's RAM plus swap: such a VM would only end in the OOM
/// killer, long after start.
fn check_host_memory(size: u64) -> Result<(), Error> {
    // SAFETY: sysinfo fills the struct we pass and touches nothing else.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return Ok(());
    }
    let unit = u64::from(info.mem_unit.max(1));
    let host = (info.totalram as u64)
        .saturating_add(info.totalswap as u64)
        .saturating_mul(unit);
    if size > host {
        return Err(Error::MemoryTooLarge { size, host });
    }
    Ok(())
}

/// The (guest address, size, host address) of every region, for KVM's memory slots.
pub fn regions(mem: &GuestMemoryMmap) -> Vec<hypervisor::MemoryRegion> {
    mem.iter()
        .map(|r| hypervisor::MemoryRegion {
            guest_addr: r.start_addr().0,
            size: r.len(),
            host_addr: r.as_ptr() as u64,
        })
        .collect()
}

/// Total guest RAM in bytes.
pub fn total(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// RAM below and above 4 GiB (for the CMOS memory-size registers).
pub fn split_at_4g(mem: &GuestMemoryMmap) -> (u64, u64) {
    let four_g = GuestAddress(1 << 32);
    let below = mem
        .iter()
        .filter(|r| r.start_addr() < four_g)
        .map(|r| r.len())
        .sum();
    (below, total(mem) - below)
}
