//! Images held in memory (fuzzing, crash-image checks, tests).

use std::io;
use std::path::{Path, PathBuf};

use crate::file::ImageFile;

/// An image held in memory (fuzzing, crash-image checks, tests).
#[derive(Debug, Default)]
pub struct MemFile {
    data: std::sync::Mutex<Vec<u8>>,
    path: PathBuf,
}

impl MemFile {
    /// Wraps `data`; `path` is only used in messages.
    pub fn new(data: Vec<u8>, path: &str) -> Self {
        MemFile {
            data: std::sync::Mutex::new(data),
            path: PathBuf::from(path),
        }
    }

    /// A copy of the content.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Largest in-memory file (keeps a fuzzed header from growing one without bound).
const MEM_MAX: u64 = 1 << 30;

impl ImageFile for MemFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let d = self.lock();
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= d.len() {
            return Ok(0);
        }
        let n = buf.len().min(d.len() - start);
        buf[..n].copy_from_slice(&d[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= MEM_MAX)
            .ok_or_else(|| io::Error::other("in-memory file limit"))?;
        let mut d = self.lock();
        if d.len() < end as usize {
            d.resize(end as usize, 0);
        }
        d[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > MEM_MAX {
            return Err(io::Error::other("in-memory file limit"));
        }
        self.lock().resize(len as usize, 0);
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut d = self.lock();
        let start = (offset as usize).min(d.len());
        let end = (offset.saturating_add(len) as usize).min(d.len());
        d[start..end].fill(0);
        Ok(())
    }
    fn allocated_bytes(&self) -> io::Result<u64> {
        self.len()
    }
}
