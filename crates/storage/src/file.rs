//! Host files under the formats: positional I/O, durability, hole punching, QEMU-compatible locks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::backend::BlockError;
use crate::io::aligned::{AlignedBuf, ALIGN};

/// A host file holding an image. Formats do all their I/O through it, so a test can record
/// or replay that I/O (see [`crate::recording`]).
#[allow(clippy::len_without_is_empty)]
pub trait ImageFile: Send {
    /// The path, for error messages.
    fn path(&self) -> &Path;
    /// Reads at `offset`; returns fewer bytes only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn sync(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Deallocates a range so it reads as zeroes, keeping the length.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Bytes actually allocated on the host.
    fn allocated_bytes(&self) -> io::Result<u64>;
    /// Alignment that direct access to the descriptor needs (O_DIRECT: 4096; else 1).
    fn alignment(&self) -> u64 {
        1
    }
    /// The file descriptor, for I/O engines that submit to the kernel directly.
    fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        None
    }
    /// The first offset at or after `offset` holding data (SEEK_DATA); `None` if none.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok(Some(offset))
    }
    /// The first hole at or after `offset` (SEEK_HOLE; the end of the file counts as one).
    fn next_hole(&self, _offset: u64) -> io::Result<u64> {
        self.len()
    }
}

impl<'a> dyn ImageFile + 'a {
    /// Reads exactly `buf.len()` bytes, zero-filling past the end of the file.
    pub fn read_zero_fill(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let mut done = 0;
        while done < buf.len() {
            let pos = offset.saturating_add(done as u64);
            let n = self
                .read_at(&mut buf[done..], pos)
                .map_err(|e| self.io_err(pos, buf.len() as u64, e))?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes; reading past the end of the file is an error.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let mut done = 0;
        while done < buf.len() {
            let pos = offset.saturating_add(done as u64);
            let n = self
                .read_at(&mut buf[done..], pos)
                .map_err(|e| self.io_err(pos, buf.len() as u64, e))?;
            if n == 0 {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "past the end of the file");
                return Err(self.io_err(pos, buf.len() as u64, e));
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` at `offset`, mapping the error.
    pub fn write_checked(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.write_all_at(buf, offset)
            .map_err(|e| self.io_err(offset, buf.len() as u64, e))
    }

    /// Syncs, mapping the error.
    pub fn sync_checked(&self) -> Result<(), BlockError> {
        self.sync().map_err(|e| self.io_err(0, 0, e))
    }

    /// Length, mapping the error.
    pub fn len_checked(&self) -> Result<u64, BlockError> {
        self.len().map_err(|e| self.io_err(0, 0, e))
    }

    /// Builds a [`BlockError::Io`] for this file.
    pub fn io_err(&self, offset: u64, len: u64, source: io::Error) -> BlockError {
        BlockError::Io {
            path: self.path().to_path_buf(),
            offset,
            len,
            source,
        }
    }
}

/// Error opening a host file.
#[derive(Debug, thiserror::Error)]
pub enum OpenFileError {
    /// open(2) failed.
    #[error("cannot open {path} ({mode})")]
    Open {
        /// Path.
        path: PathBuf,
        /// "read-only" or "read-write".
        mode: &'static str,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// Another process (thinvm or QEMU) has the image open for writing.
    #[error("{path} is in use by another writer (its lock is held)")]
    Locked {
        /// Path.
        path: PathBuf,
    },
    /// Taking the lock failed.
    #[error("cannot lock {path}")]
    Lock {
        /// Path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

/// A plain host file.
#[derive(Debug)]
pub struct HostFile {
    file: File,
    path: PathBuf,
    direct: bool,
    locked: bool,
}

impl Drop for HostFile {
    fn drop(&mut self) {
        // Unlock explicitly: a child forked by another thread may briefly share this open
        // file description (until its exec), and would otherwise keep the lock alive.
        if self.locked {
            for byte in [LOCK_PERM_READ, LOCK_PERM_WRITE, LOCK_UNSHARE_WRITE] {
                let _ = self.ofd_lock(libc::F_OFD_SETLK, libc::F_UNLCK as i16, byte);
            }
        }
    }
}

// QEMU's lock bytes (block/file-posix.c layout): 100 + permission bit held, 200 + permission
// bit not shared. Bit 0 is "consistent read", bit 1 is "write".
const LOCK_PERM_READ: i64 = 100;
const LOCK_PERM_WRITE: i64 = 101;
const LOCK_UNSHARE_WRITE: i64 = 201;

impl HostFile {
    /// Opens `path`; a writable file takes QEMU-compatible OFD locks so a second writer is refused.
    pub fn open(path: &Path, writable: bool, direct: bool) -> Result<Self, OpenFileError> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(writable);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(path).map_err(|source| OpenFileError::Open {
            path: path.to_path_buf(),
            mode: if writable { "read-write" } else { "read-only" },
            source,
        })?;
        let mut hf = HostFile {
            file,
            path: path.to_path_buf(),
            direct,
            locked: false,
        };
        if writable {
            hf.lock_for_write()?;
        }
        Ok(hf)
    }

    /// Creates (or truncates) `path` for writing.
    pub fn create(path: &Path) -> Result<Self, OpenFileError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| OpenFileError::Open {
                path: path.to_path_buf(),
                mode: "create",
                source,
            })?;
        let mut hf = HostFile {
            file,
            path: path.to_path_buf(),
            direct: false,
            locked: false,
        };
        hf.lock_for_write()?;
        Ok(hf)
    }

    fn lock_for_write(&mut self) -> Result<(), OpenFileError> {
        for byte in [LOCK_PERM_WRITE, LOCK_UNSHARE_WRITE] {
            if self.conflicts(byte)? {
                return Err(OpenFileError::Locked {
                    path: self.path.clone(),
                });
            }
        }
        self.locked = true;
        for byte in [LOCK_PERM_READ, LOCK_PERM_WRITE, LOCK_UNSHARE_WRITE] {
            self.ofd_lock(libc::F_OFD_SETLK, libc::F_RDLCK as i16, byte)?;
        }
        Ok(())
    }

    fn conflicts(&self, byte: i64) -> Result<bool, OpenFileError> {
        let fl = self.ofd_lock(libc::F_OFD_GETLK, libc::F_WRLCK as i16, byte)?;
        Ok(fl.l_type != libc::F_UNLCK as i16)
    }

    fn ofd_lock(&self, cmd: i32, ty: i16, byte: i64) -> Result<libc::flock, OpenFileError> {
        // SAFETY: flock is plain old data; all-zero is a valid value.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = ty;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = byte;
        fl.l_len = 1;
        // SAFETY: the fd is open for the lifetime of self and `fl` is a valid flock.
        let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &mut fl) };
        if rc < 0 {
            let source = io::Error::last_os_error();
            if cmd == libc::F_OFD_SETLK && matches!(source.raw_os_error(), Some(libc::EAGAIN)) {
                return Err(OpenFileError::Locked {
                    path: self.path.clone(),
                });
            }
            return Err(OpenFileError::Lock {
                path: self.path.clone(),
                source,
            });
        }
        Ok(fl)
    }

    fn lseek(&self, offset: u64, whence: i32) -> io::Result<u64> {
        let off = i64::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: lseek only takes integers; the fd is open. Our I/O is positional, so moving
        // the file position does not disturb it.
        let rc = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as u64)
    }

    /// Whether the file was opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn aligned(buf: &[u8], offset: u64) -> bool {
        let a = ALIGN as u64;
        (buf.as_ptr() as usize).is_multiple_of(ALIGN)
            && (buf.len() as u64).is_multiple_of(a)
            && offset.is_multiple_of(a)
    }

    /// O_DIRECT read through an aligned bounce buffer.
    fn direct_read(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let a = ALIGN as u64;
        let start = offset - offset % a;
        let end = (offset + buf.len() as u64).next_multiple_of(a);
        let mut b = AlignedBuf::new((end - start) as usize)
            .ok_or_else(|| io::Error::other("bounce buffer"))?;
        let mut got = 0usize;
        while got < b.as_slice().len() {
            let n = self.pread(&mut b.as_mut_slice()[got..], start + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let skip = (offset - start) as usize;
        let n = got.saturating_sub(skip).min(buf.len());
        buf[..n].copy_from_slice(&b.as_slice()[skip..skip + n]);
        Ok(n)
    }

    /// O_DIRECT write: read-modify-write of the aligned window, then restore the length.
    fn direct_write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let a = ALIGN as u64;
        let start = offset - offset % a;
        let end = (offset + buf.len() as u64).next_multiple_of(a);
        let mut b = AlignedBuf::new((end - start) as usize)
            .ok_or_else(|| io::Error::other("bounce buffer"))?;
        let old_len = self.file.metadata()?.len();
        if start != offset || end != offset + buf.len() as u64 {
            self.direct_read(b.as_mut_slice(), start)?;
        }
        let skip = (offset - start) as usize;
        b.as_mut_slice()[skip..skip + buf.len()].copy_from_slice(buf);
        self.file.write_all_at(b.as_slice(), start)?;
        let new_len = old_len.max(offset + buf.len() as u64);
        if end > new_len {
            self.file.set_len(new_len)?;
        }
        Ok(())
    }

    /// The underlying file (for I/O engines).
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl ImageFile for HostFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.direct && !Self::aligned(buf, offset) {
            return self.direct_read(buf, offset);
        }
        self.pread(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.direct && !Self::aligned(buf, offset) {
            return self.direct_write(buf, offset);
        }
        self.file.write_all_at(buf, offset)
    }
    fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        Some(self.file.as_raw_fd())
    }
    fn alignment(&self) -> u64 {
        if self.direct {
            ALIGN as u64
        } else {
            1
        }
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range too large",
            ));
        };
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate only reads its integer arguments; the fd is open.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        match self.lseek(offset, libc::SEEK_DATA) {
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some(offset)),
            r => r.map(Some),
        }
    }
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        match self.lseek(offset, libc::SEEK_HOLE) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.len(),
            r => r,
        }
    }
    fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks().saturating_mul(512))
    }
}

pub use crate::memfile::MemFile;
