//! Raw disk images: sparse files, discard as hole punching, optional O_DIRECT.

use std::io;
use std::path::Path;

use crate::backend::{check_range, BlockBackend, BlockError, Extent, ExtentKind};
use crate::file::{HostFile, ImageFile, OpenFileError};
use crate::io::aligned::{AlignedBuf, ALIGN};

/// A raw image.
pub struct Raw {
    file: Box<dyn ImageFile>,
    size: u64,
    read_only: bool,
    direct: bool,
}

impl Raw {
    /// Opens a raw file; `direct` uses O_DIRECT with bounce buffers.
    pub fn open(path: &Path, writable: bool, direct: bool) -> Result<Self, OpenFileError> {
        let file = HostFile::open(path, writable, direct)?;
        let size = file.len().map_err(|source| OpenFileError::Open {
            path: path.to_path_buf(),
            mode: "stat",
            source,
        })?;
        Ok(Raw {
            file: Box::new(file),
            size,
            read_only: !writable,
            direct,
        })
    }

    /// Wraps an already open file (used by tests and the recording backend).
    pub fn from_file(file: Box<dyn ImageFile>, read_only: bool) -> Result<Self, BlockError> {
        let size = file.len_checked()?;
        Ok(Raw {
            file,
            size,
            read_only,
            direct: false,
        })
    }

    /// Creates a sparse raw file of `size` bytes.
    pub fn create(path: &Path, size: u64) -> Result<Self, BlockError> {
        let file = HostFile::create(path).map_err(|e| BlockError::Io {
            path: path.to_path_buf(),
            offset: 0,
            len: 0,
            source: io::Error::other(e.to_string()),
        })?;
        let file: Box<dyn ImageFile> = Box::new(file);
        file.set_len(size).map_err(|e| file.io_err(size, 0, e))?;
        Ok(Raw {
            file,
            size,
            read_only: false,
            direct: false,
        })
    }

    fn writable(&self) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly {
                path: self.file.path().to_path_buf(),
            });
        }
        Ok(())
    }

    /// The aligned window covering `[offset, offset+len)` for O_DIRECT.
    fn window(offset: u64, len: usize) -> (u64, usize) {
        let start = offset - offset % ALIGN as u64;
        let end = (offset + len as u64).next_multiple_of(ALIGN as u64);
        (start, (end - start) as usize)
    }

    fn bounce(&self, len: usize) -> Result<AlignedBuf, BlockError> {
        AlignedBuf::new(len).ok_or_else(|| {
            self.file.io_err(
                0,
                len as u64,
                io::Error::other("bounce buffer allocation failed"),
            )
        })
    }

    fn direct_read(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let (start, wlen) = Self::window(offset, buf.len());
        let mut b = self.bounce(wlen)?;
        self.file.read_zero_fill(b.as_mut_slice(), start)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&b.as_slice()[skip..skip + buf.len()]);
        Ok(())
    }

    fn direct_write(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        let (start, wlen) = Self::window(offset, buf.len());
        let mut b = self.bounce(wlen)?;
        let skip = (offset - start) as usize;
        if skip != 0 || wlen != buf.len() {
            self.file.read_zero_fill(b.as_mut_slice(), start)?;
        }
        b.as_mut_slice()[skip..skip + buf.len()].copy_from_slice(buf);
        self.file.write_checked(b.as_slice(), start)?;
        // A window past the old end of a file whose size is not aligned grows the file.
        let end = start + wlen as u64;
        if end > self.size {
            self.file
                .set_len(self.size)
                .map_err(|e| self.file.io_err(self.size, 0, e))?;
        }
        Ok(())
    }
}

impl BlockBackend for Raw {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.size)?;
        if self.direct {
            return self.direct_read(buf, offset);
        }
        self.file.read_zero_fill(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.writable()?;
        check_range(offset, buf.len() as u64, self.size)?;
        if self.direct {
            return self.direct_write(buf, offset);
        }
        self.file.write_checked(buf, offset)
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_checked()
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.writable()?;
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        match self.file.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                let zeros = vec![0u8; 1 << 20];
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(zeros.len() as u64) as usize;
                    self.write_at(&zeros[..n], offset + done)?;
                    done += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(self.file.io_err(offset, len, e)),
        }
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn alignment(&self) -> u64 {
        if self.direct {
            ALIGN as u64
        } else {
            512
        }
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn extent(&mut self, offset: u64, len: u64) -> Result<Extent, BlockError> {
        check_range(offset, len, self.size)?;
        let err = |e| self.file.io_err(offset, len, e);
        let zero = |l: u64| Extent {
            kind: ExtentKind::Zero,
            len: l.clamp(1, len.max(1)),
        };
        match self.file.next_data(offset).map_err(err)? {
            None => Ok(zero(len)),
            Some(d) if d > offset => Ok(zero(d - offset)),
            Some(_) => {
                let hole = self.file.next_hole(offset).map_err(err)?;
                Ok(Extent {
                    kind: ExtentKind::Data,
                    len: hole.saturating_sub(offset).clamp(1, len.max(1)),
                })
            }
        }
    }
}
