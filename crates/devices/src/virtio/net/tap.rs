//! A TAP device as a [`NetBackend`]: `/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`
//! and a 12-byte vnet header, non-blocking; or a TAP descriptor inherited from the parent.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::VolatileSlice;

use super::{NetBackend, F_GUEST_CSUM, F_GUEST_ECN, F_GUEST_TSO4, F_GUEST_TSO6, HDR_LEN};

// ioctl numbers of <linux/if_tun.h>: _IOW('T', nr, int/unsigned int) = 0x4004_54nr.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
// TUNSETOFFLOAD flags.
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const IFNAMSIZ: usize = 16;

/// `struct ifreq` as TUNSETIFF / TUNGETIFF use it: a name and the flags (40 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Why a TAP could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or has a NUL.
    #[error("invalid TAP name {0:?} (1 to 15 bytes, no NUL)")]
    Name(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    Open(#[source] io::Error),
    /// An ioctl failed.
    #[error("{op} on TAP {name:?} failed: {source}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// The interface.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// An inherited descriptor is not an open TAP with a vnet header.
    #[error("fd {fd} is not a TAP with IFF_VNET_HDR: {reason}")]
    Inherited {
        /// The descriptor.
        fd: RawFd,
        /// What is wrong.
        reason: String,
    },
}

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: callers pass a TUN ioctl whose argument is the pointed-to, live, correctly sized
    // structure (or an integer passed by value through the pointer slot for TUNSETOFFLOAD).
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_vnet_hdr(fd: RawFd) -> io::Result<()> {
    let mut size: libc::c_int = HDR_LEN as libc::c_int;
    ioctl_ptr(fd, TUNSETVNETHDRSZ, &mut size)
}

impl Tap {
    /// Opens TAP `name`, creating it if it does not exist (creating needs CAP_NET_ADMIN).
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
            return Err(TapError::Name(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let err = |op| {
            move |source| TapError::Ioctl {
                op,
                name: name.into(),
                source,
            }
        };
        ioctl_ptr(file.as_raw_fd(), TUNSETIFF, &mut req).map_err(err("TUNSETIFF"))?;
        set_vnet_hdr(file.as_raw_fd()).map_err(err("TUNSETVNETHDRSZ"))?;
        Ok(Tap {
            file,
            name: name.into(),
        })
    }

    /// Takes inherited descriptor `fd` (a TAP opened with `IFF_VNET_HDR`); it becomes
    /// non-blocking and is closed with the returned value.
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else in the process owns or closes.
    pub unsafe fn from_fd(fd: RawFd) -> Result<Self, TapError> {
        let bad = |reason: String| TapError::Inherited { fd, reason };
        // SAFETY: the caller gives us sole ownership of `fd`.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        ioctl_ptr(fd, TUNGETIFF, &mut req).map_err(|e| bad(format!("TUNGETIFF: {e}")))?;
        if req.flags & IFF_TAP == 0 || req.flags & IFF_VNET_HDR == 0 {
            return Err(bad(format!("flags {:#x}", req.flags)));
        }
        set_vnet_hdr(fd).map_err(|e| bad(format!("TUNSETVNETHDRSZ: {e}")))?;
        // SAFETY: F_GETFL / F_SETFL on a descriptor we own; no pointers involved.
        let ok = unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) >= 0
        };
        if !ok {
            return Err(bad(format!("O_NONBLOCK: {}", io::Error::last_os_error())));
        }
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        Ok(Tap { file, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The TUNSETOFFLOAD flags for the guest's accepted virtio-net `features`: what the TAP may hand
/// to the guest (partial checksums, TSO segments).
pub fn offload_flags(features: u64) -> libc::c_uint {
    let mut f = 0;
    if features & F_GUEST_CSUM != 0 {
        f |= TUN_F_CSUM;
        // Segmentation offloads need checksum offload.
        if features & F_GUEST_TSO4 != 0 {
            f |= TUN_F_TSO4;
        }
        if features & F_GUEST_TSO6 != 0 {
            f |= TUN_F_TSO6;
        }
        if features & F_GUEST_ECN != 0 && f & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
            f |= TUN_F_TSO_ECN;
        }
    }
    f
}

/// Runs `op` on iovecs describing `bufs` (guest memory, or a caller's buffer).
fn with_iovecs<R>(bufs: &[VolatileSlice<'_>], op: impl FnOnce(&[libc::iovec]) -> R) -> R {
    // The guards keep each slice's mapping valid until the syscall has returned.
    let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
    let iov: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect();
    op(&iov)
}

fn iov_count(iov: &[libc::iovec]) -> io::Result<libc::c_int> {
    libc::c_int::try_from(iov.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl NetBackend for Tap {
    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let fd = self.file.as_raw_fd();
        with_iovecs(bufs, |iov| {
            let count = iov_count(iov)?;
            // SAFETY: every iovec describes memory that stays mapped and writable for the call
            // (the guards above); the kernel writes at most their lengths. A guest may touch
            // the same bytes meanwhile, which only changes the frame it receives.
            let n = unsafe { libc::readv(fd, iov.as_ptr(), count) };
            // tun returns the whole frame's length even when the buffers were shorter.
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        })
    }

    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let n = with_iovecs(bufs, |iov| {
            let count = iov_count(iov)?;
            // SAFETY: every iovec describes mapped memory that the kernel only reads, for the
            // call (the guards above).
            let n = unsafe { libc::writev(fd, iov.as_ptr(), count) };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        })?;
        if n != len {
            return Err(io::Error::other(format!(
                "short TAP write: {n} of {len} bytes"
            )));
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn set_offload(&mut self, features: u64) -> io::Result<()> {
        let flags = offload_flags(features);
        // SAFETY: TUNSETOFFLOAD takes its flags by value in the argument slot; no memory is
        // read or written through it.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tests;
