//! Raw disk images: sparse files, discard as hole punching, optional O_DIRECT.

use std::io;
use std::path::Path;

use crate::backend::{check_range, BlockBackend, BlockError, Extent, ExtentKind, HostRange};
use crate::file::{HostFile, ImageFile, OpenFileError};

/// A raw image.
pub struct Raw {
    file: Box<dyn ImageFile>,
    size: u64,
    read_only: bool,
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
        })
    }

    /// Wraps an already open file (used by tests and the recording backend).
    pub fn from_file(file: Box<dyn ImageFile>, read_only: bool) -> Result<Self, BlockError> {
        let size = file.len_checked()?;
        Ok(Raw {
            file,
            size,
            read_only,
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
}

impl BlockBackend for Raw {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_zero_fill(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.writable()?;
        check_range(offset, buf.len() as u64, self.size)?;
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
        self.file.alignment().max(512)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn host_range(
        &mut self,
        offset: u64,
        len: u64,
        _write: bool,
    ) -> Result<Option<HostRange>, BlockError> {
        check_range(offset, len, self.size)?;
        if self.read_only && _write {
            return Ok(None);
        }
        Ok(self.file.raw_fd().map(|fd| HostRange { fd, offset }))
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
