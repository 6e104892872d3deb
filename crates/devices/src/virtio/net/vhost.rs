//! The kernel's vhost-net (`/dev/vhost-net`, `<linux/vhost.h>`): the rx and tx rings are served
//! by a kernel thread that moves frames between guest memory and the TAP directly, so neither a
//! guest notification nor a frame passes through the VMM.
//!
//! The device hands the kernel: the guest memory table (guest physical address, size, the
//! VMM's mapping), per queue the ring size, first index and the *host* addresses of the three
//! rings, the queue's notification eventfd (a KVM ioeventfd: the guest's kick) and an eventfd
//! that raises the queue's MSI-X vector (a KVM irqfd), then the TAP as backend. Ring addresses
//! come from the guest: each ring is checked to lie, whole and aligned, inside one guest memory
//! region before its host address is computed ([`ring_addrs`]), so the kernel is never given a
//! pointer outside guest RAM.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref};
/// The vhost-net character device.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

const VHOST: u32 = 0xAF;

/// `struct vhost_vring_state`.
#[repr(C)]
#[derive(Default)]
struct VringState {
    index: u32,
    num: u32,
}

/// `struct vhost_vring_file`.
#[repr(C)]
struct VringFile {
    index: u32,
    fd: i32,
}

/// `struct vhost_vring_addr`.
#[repr(C)]
#[derive(Debug, Default, PartialEq, Eq)]
struct VringAddr {
    index: u32,
    flags: u32,
    desc_user_addr: u64,
    used_user_addr: u64,
    avail_user_addr: u64,
    log_guest_addr: u64,
}

/// `struct vhost_memory` without its flexible array of regions (what the ioctl number encodes).
#[repr(C)]
struct MemoryHeader {
    nregions: u32,
    padding: u32,
}

/// `struct vhost_memory_region`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest physical address of the region.
    pub guest_phys_addr: u64,
    /// Its size in bytes.
    pub memory_size: u64,
    /// Where the VMM maps it.
    pub userspace_addr: u64,
    flags_padding: u64,
}

/// The ioctl numbers of `<linux/vhost.h>` (type 0xAF).
mod nr {
    use super::{MemoryHeader, VringAddr, VringFile, VringState, VHOST};
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    ioctl_ior_nr!(VHOST_GET_FEATURES, VHOST, 0x00, u64);
    ioctl_iow_nr!(VHOST_SET_FEATURES, VHOST, 0x00, u64);
    ioctl_io_nr!(VHOST_SET_OWNER, VHOST, 0x01);
    ioctl_iow_nr!(VHOST_SET_MEM_TABLE, VHOST, 0x03, MemoryHeader);
    ioctl_iow_nr!(VHOST_SET_VRING_NUM, VHOST, 0x10, VringState);
    ioctl_iow_nr!(VHOST_SET_VRING_ADDR, VHOST, 0x11, VringAddr);
    ioctl_iow_nr!(VHOST_SET_VRING_BASE, VHOST, 0x12, VringState);
    ioctl_iowr_nr!(VHOST_GET_VRING_BASE, VHOST, 0x12, VringState);
    ioctl_iow_nr!(VHOST_SET_VRING_KICK, VHOST, 0x20, VringFile);
    ioctl_iow_nr!(VHOST_SET_VRING_CALL, VHOST, 0x21, VringFile);
    ioctl_iow_nr!(VHOST_NET_SET_BACKEND, VHOST, 0x30, VringFile);
}
use nr::*;

/// Why vhost-net could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// /dev/vhost-net could not be opened (no `vhost_net` module, or no permission).
    #[error("cannot open {path} (is the vhost_net module loaded?): {source}")]
    Open {
        /// The device path.
        path: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("vhost-net {op} failed: {source}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel lacks a feature the device needs.
    #[error("vhost-net lacks {0} (kernel too old)")]
    Missing(&'static str),
    /// A ring the driver configured is not wholly inside one guest memory region, or is
    /// misaligned (guest input: the device needs a reset).
    #[error(
        "queue {queue}: {ring} at {addr:#x} (+{len:#x}) is outside guest memory or misaligned"
    )]
    Ring {
        /// Queue index.
        queue: u16,
        /// Which ring.
        ring: &'static str,
        /// Its guest address.
        addr: u64,
        /// Its size.
        len: u64,
    },
    /// A queue's size is not a power of two in 1..=32768.
    #[error("queue {queue}: size {size} is not a power of two")]
    QueueSize {
        /// Queue index.
        queue: u16,
        /// The size.
        size: u16,
    },
    /// Guest memory has too many regions, or a region has no host address.
    #[error("guest memory cannot be described to vhost-net: {0}")]
    Memory(String),
}

fn check(op: &'static str, r: i32) -> Result<(), VhostError> {
    if r < 0 {
        Err(VhostError::Ioctl {
            op,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

/// The guest addresses of one split virtqueue, as the driver wrote them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Queue index.
    pub index: u16,
    /// Queue size (a power of two).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// Host addresses of a ring's three parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingHostAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// The host address of `len` bytes at guest `addr`, aligned to `align`, when the whole range
/// lies in one region of `mem` (two regions need not be adjacent in the VMM's address space,
/// so a range that crosses a region boundary cannot be given to the kernel as one pointer).
fn host_range(mem: &GuestMemoryMmap, addr: u64, len: u64, align: u64) -> Option<u64> {
    if !addr.is_multiple_of(align) {
        return None;
    }
    let region = mem.find_region(GuestAddress(addr))?;
    let rel = addr.checked_sub(region.start_addr().0)?;
    if rel.checked_add(len)? > region.len() {
        return None;
    }
    let host = region.get_host_address(MemoryRegionAddress(rel)).ok()?;
    Some(host as u64)
}

/// Checks a ring configured by the guest and translates it to host addresses. Sizes are those
/// of the split ring with EVENT_IDX (what vhost checks): descriptors 16 bytes each, avail
/// 6 + 2n, used 6 + 8n; alignments 16, 2 and 4.
pub fn ring_addrs(mem: &GuestMemoryMmap, ring: &RingConfig) -> Result<RingHostAddrs, VhostError> {
    let n = u64::from(ring.size);
    if ring.size == 0 || !ring.size.is_power_of_two() || ring.size > 32768 {
        return Err(VhostError::QueueSize {
            queue: ring.index,
            size: ring.size,
        });
    }
    let part = |name: &'static str, addr: u64, len: u64, align: u64| {
        host_range(mem, addr, len, align).ok_or(VhostError::Ring {
            queue: ring.index,
            ring: name,
            addr,
            len,
        })
    };
    Ok(RingHostAddrs {
        desc: part("descriptor table", ring.desc, 16 * n, 16)?,
        avail: part("available ring", ring.avail, 6 + 2 * n, 2)?,
        used: part("used ring", ring.used, 6 + 8 * n, 4)?,
    })
}

/// Most memory regions vhost-net accepts by default (its `max_mem_regions` parameter).
pub const MAX_REGIONS: usize = 64;

/// The vhost memory table of `mem`: one entry per region.
pub fn memory_regions(mem: &GuestMemoryMmap) -> Result<Vec<MemoryRegion>, VhostError> {
    let mut out = Vec::new();
    for r in mem.iter() {
        let host = r
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| VhostError::Memory(format!("region at {:#x}: {e}", r.start_addr().0)))?;
        out.push(MemoryRegion {
            guest_phys_addr: r.start_addr().0,
            memory_size: r.len(),
            userspace_addr: host as u64,
            flags_padding: 0,
        });
    }
    if out.is_empty() || out.len() > MAX_REGIONS {
        return Err(VhostError::Memory(format!("{} regions", out.len())));
    }
    Ok(out)
}

/// An open `/dev/vhost-net` that this process owns (VHOST_SET_OWNER done). Dropping it closes
/// the descriptor, which stops the kernel's worker and releases the rings.
#[derive(Debug)]
pub struct VhostNet {
    file: File,
}

impl VhostNet {
    /// Opens `path` (normally [`VHOST_NET_PATH`]) and becomes its owner.
    pub fn open(path: &Path) -> Result<Self, VhostError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| VhostError::Open {
                path: path.display().to_string(),
                source,
            })?;
        // SAFETY: VHOST_SET_OWNER takes no argument; `file` is an open vhost descriptor.
        check("VHOST_SET_OWNER", unsafe {
            ioctl(&file, VHOST_SET_OWNER())
        })?;
        Ok(VhostNet { file })
    }

    /// The features the kernel offers.
    pub fn features(&self) -> Result<u64, VhostError> {
        let mut f = 0u64;
        // SAFETY: VHOST_GET_FEATURES writes one u64 through the pointer, to a live local.
        let r = unsafe { ioctl_with_mut_ref(&self.file, VHOST_GET_FEATURES(), &mut f) };
        check("VHOST_GET_FEATURES", r)?;
        Ok(f)
    }

    /// Sets the negotiated features.
    pub fn set_features(&self, features: u64) -> Result<(), VhostError> {
        // SAFETY: VHOST_SET_FEATURES reads one u64 from the pointer, a live local.
        let r = unsafe { ioctl_with_ref(&self.file, VHOST_SET_FEATURES(), &features) };
        check("VHOST_SET_FEATURES", r)
    }

    /// Gives the kernel the guest memory table.
    pub fn set_mem_table(&self, regions: &[MemoryRegion]) -> Result<(), VhostError> {
        // The header (8 bytes) and the regions (32 bytes each), in u64 words for alignment.
        let mut buf = vec![0u64; 1 + regions.len() * 4];
        buf[0] = regions.len() as u64; // nregions (low half, little endian), padding 0.
        for (i, r) in regions.iter().enumerate() {
            let w = &mut buf[1 + i * 4..5 + i * 4];
            w.copy_from_slice(&[r.guest_phys_addr, r.memory_size, r.userspace_addr, 0]);
        }
        // SAFETY: `buf` is a live `struct vhost_memory` with `nregions` regions after it,
        // 8-byte aligned; the kernel copies it and keeps no pointer to it.
        let r = unsafe {
            ioctl_with_ptr(
                &self.file,
                VHOST_SET_MEM_TABLE(),
                buf.as_ptr().cast::<MemoryHeader>(),
            )
        };
        check("VHOST_SET_MEM_TABLE", r)
    }

    fn vring_state(
        &self,
        op: &'static str,
        req: libc::c_ulong,
        index: u16,
        num: u32,
    ) -> Result<(), VhostError> {
        let s = VringState {
            index: u32::from(index),
            num,
        };
        // SAFETY: the SET_VRING_NUM / SET_VRING_BASE ioctls read one vhost_vring_state, live.
        check(op, unsafe { ioctl_with_ref(&self.file, req, &s) })
    }

    fn vring_file(
        &self,
        op: &'static str,
        req: libc::c_ulong,
        index: u16,
        fd: RawFd,
    ) -> Result<(), VhostError> {
        let f = VringFile {
            index: u32::from(index),
            fd,
        };
        // SAFETY: the vring KICK / CALL / backend ioctls read one vhost_vring_file, live; the
        // kernel takes its own reference to the descriptor (or detaches on -1).
        check(op, unsafe { ioctl_with_ref(&self.file, req, &f) })
    }

    /// Configures ring `ring` (already translated to `host`): size, first available index 0,
    /// addresses, the guest's kick eventfd and the interrupt eventfd.
    pub fn set_vring(
        &self,
        ring: &RingConfig,
        host: &RingHostAddrs,
        kick: RawFd,
        call: RawFd,
    ) -> Result<(), VhostError> {
        let i = ring.index;
        self.vring_state(
            "VHOST_SET_VRING_NUM",
            VHOST_SET_VRING_NUM(),
            i,
            u32::from(ring.size),
        )?;
        self.vring_state("VHOST_SET_VRING_BASE", VHOST_SET_VRING_BASE(), i, 0)?;
        let addr = VringAddr {
            index: u32::from(i),
            flags: 0,
            desc_user_addr: host.desc,
            used_user_addr: host.used,
            avail_user_addr: host.avail,
            log_guest_addr: 0,
        };
        // SAFETY: VHOST_SET_VRING_ADDR reads one vhost_vring_addr, live; its addresses were
        // checked by `ring_addrs` to lie inside guest memory, which outlives the device's use
        // of this descriptor (the device keeps the memory until it closes it).
        let r = unsafe { ioctl_with_ref(&self.file, VHOST_SET_VRING_ADDR(), &addr) };
        check("VHOST_SET_VRING_ADDR", r)?;
        self.vring_file("VHOST_SET_VRING_KICK", VHOST_SET_VRING_KICK(), i, kick)?;
        self.vring_file("VHOST_SET_VRING_CALL", VHOST_SET_VRING_CALL(), i, call)
    }

    /// Attaches `tap` to ring `index` (starts serving it), or detaches with `None`.
    pub fn set_backend(&self, index: u16, tap: Option<RawFd>) -> Result<(), VhostError> {
        let fd = tap.unwrap_or(-1);
        self.vring_file("VHOST_NET_SET_BACKEND", VHOST_NET_SET_BACKEND(), index, fd)
    }

    /// The next available index the kernel would serve on ring `index` (stops the ring).
    pub fn vring_base(&self, index: u16) -> Result<u16, VhostError> {
        let mut s = VringState {
            index: u32::from(index),
            num: 0,
        };
        // SAFETY: VHOST_GET_VRING_BASE reads and writes one vhost_vring_state, a live local.
        let r = unsafe { ioctl_with_mut_ref(&self.file, VHOST_GET_VRING_BASE(), &mut s) };
        check("VHOST_GET_VRING_BASE", r)?;
        Ok(s.num as u16)
    }
}

impl AsRawFd for VhostNet {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
#[path = "vhost_tests.rs"]
mod tests;
