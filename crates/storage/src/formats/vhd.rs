//! VHD (Virtual PC / Hyper-V "vpc") images, fixed and dynamic, read-only.

use crate::backend::{check_range, BlockBackend, BlockError, Extent, ExtentKind};
use crate::file::ImageFile;

/// Error opening a VHD image.
#[derive(Debug, thiserror::Error)]
pub enum VhdError {
    /// I/O failed.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// No "conectix" footer at the end (nor its copy at the start).
    #[error("not a VHD image (no conectix footer)")]
    NoFooter,
    /// A disk type thinvm does not read.
    #[error("VHD disk type {0} is not supported (only fixed 2 and dynamic 3)")]
    DiskType(u32),
    /// A dynamic header or field out of bounds.
    #[error("VHD {field} = {value:#x}: {why}")]
    Bad {
        /// Field.
        field: &'static str,
        /// Value.
        value: u64,
        /// What is wrong.
        why: &'static str,
    },
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// An open VHD image.
pub struct Vhd {
    file: Box<dyn ImageFile>,
    size: u64,
    /// Dynamic: (block size, BAT); fixed: None.
    dynamic: Option<(u64, Vec<u32>)>,
    flen: u64,
}

/// Largest BAT accepted (entries): 2^24 blocks.
const MAX_BAT: u64 = 1 << 24;

impl Vhd {
    /// Opens a VHD image (read-only).
    pub fn open(file: Box<dyn ImageFile>) -> Result<Self, VhdError> {
        let flen = file.len_checked()?;
        if flen < 512 {
            return Err(VhdError::NoFooter);
        }
        let mut footer = [0u8; 512];
        file.read_exact_at(&mut footer, flen - 512)?;
        if &footer[..8] != b"conectix" {
            // Dynamic images keep a copy at the start.
            file.read_exact_at(&mut footer, 0)?;
            if &footer[..8] != b"conectix" {
                return Err(VhdError::NoFooter);
            }
        }
        let disk_type = be32(&footer, 60);
        let size = Self::virtual_size(&footer);
        match disk_type {
            2 => {
                if size > flen - 512 {
                    return Err(VhdError::Bad {
                        field: "current_size",
                        value: size,
                        why: "larger than the fixed image's data",
                    });
                }
                Ok(Vhd {
                    file,
                    size,
                    dynamic: None,
                    flen,
                })
            }
            3 => {
                let dyn_off = be64(&footer, 16);
                let dynamic = Self::read_dynamic(&*file, dyn_off, size, flen)?;
                Ok(Vhd {
                    file,
                    size,
                    dynamic: Some(dynamic),
                    flen,
                })
            }
            t => Err(VhdError::DiskType(t)),
        }
    }

    /// QEMU's rule: images from Hyper-V (and QEMU with force_size) mean current_size;
    /// others mean the CHS geometry, unless it is the maximal geometry.
    fn virtual_size(footer: &[u8]) -> u64 {
        let current = be64(footer, 48);
        let creator = &footer[28..32];
        let (c, h, s) = (
            u64::from(u16::from_be_bytes([footer[56], footer[57]])),
            u64::from(footer[58]),
            u64::from(footer[59]),
        );
        let by_current = [b"win ", b"qem2", b"d2v ", b"CTXS"]
            .iter()
            .any(|n| creator == *n);
        if by_current || (c == 65535 && h == 16 && s == 255) {
            current
        } else {
            c * h * s * 512
        }
    }

    fn read_dynamic(
        file: &dyn ImageFile,
        off: u64,
        size: u64,
        flen: u64,
    ) -> Result<(u64, Vec<u32>), VhdError> {
        let bad = |field, value, why| VhdError::Bad { field, value, why };
        if off.checked_add(1024).is_none_or(|e| e > flen) {
            return Err(bad(
                "data_offset",
                off,
                "dynamic header past the end of the file",
            ));
        }
        let mut hdr = [0u8; 1024];
        file.read_exact_at(&mut hdr, off)?;
        if &hdr[..8] != b"cxsparse" {
            return Err(bad("dynamic header", off, "no cxsparse cookie"));
        }
        let bat_off = be64(&hdr, 16);
        let entries = u64::from(be32(&hdr, 28));
        let block = u64::from(be32(&hdr, 32));
        if block == 0 || !block.is_multiple_of(512) || block > (256 << 20) {
            return Err(bad(
                "block_size",
                block,
                "must be a non-zero multiple of 512 up to 256 MiB",
            ));
        }
        if entries > MAX_BAT || entries * block < size {
            return Err(bad(
                "max_table_entries",
                entries,
                "too many, or too few for the disk size",
            ));
        }
        if bat_off.checked_add(entries * 4).is_none_or(|e| e > flen) {
            return Err(bad("table_offset", bat_off, "BAT past the end of the file"));
        }
        let mut raw = vec![0u8; (entries * 4) as usize];
        file.read_exact_at(&mut raw, bat_off)?;
        let bat = raw
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes(c.try_into().expect("4")))
            .collect();
        Ok((block, bat))
    }

    /// Host offset of guest byte `guest` and the bytes left in its block (None: unallocated).
    fn map(&self, guest: u64) -> Result<(Option<u64>, u64), BlockError> {
        let Some((block, bat)) = &self.dynamic else {
            return Ok((Some(guest), self.size - guest));
        };
        let bi = guest / block;
        let rest = block - guest % block;
        let e = bat.get(bi as usize).copied().unwrap_or(u32::MAX);
        if e == u32::MAX {
            return Ok((None, rest));
        }
        let bitmap = (block / 512).div_ceil(8).next_multiple_of(512);
        let host = u64::from(e) * 512 + bitmap + guest % block;
        if host >= self.flen {
            return Err(BlockError::Corrupt {
                path: self.file.path().to_path_buf(),
                detail: format!("VHD block {bi} at sector {e:#x} is past the end of the file"),
            });
        }
        Ok((Some(host), rest))
    }
}

impl BlockBackend for Vhd {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (host, rest) = self.map(pos)?;
            let n = (rest as usize).min(buf.len() - done);
            match host {
                Some(h) => self.file.read_zero_fill(&mut buf[done..done + n], h)?,
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly {
            path: self.file.path().to_path_buf(),
        })
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
    fn discard(&mut self, _offset: u64, _len: u64) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly {
            path: self.file.path().to_path_buf(),
        })
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly {
            path: self.file.path().to_path_buf(),
        })
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        true
    }
    fn extent(&mut self, offset: u64, len: u64) -> Result<Extent, BlockError> {
        check_range(offset, len, self.size)?;
        let (host, rest) = self.map(offset)?;
        let kind = if host.is_some() {
            ExtentKind::Data
        } else {
            ExtentKind::Zero
        };
        Ok(Extent {
            kind,
            len: rest.min(len).max(1),
        })
    }
}
