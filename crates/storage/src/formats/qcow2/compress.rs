//! Writing compressed (deflate) clusters, packed several to a host cluster.

use flate2::{Compress, Compression, FlushCompress, Status};

use super::{Qcow2, COMPRESSED, L2_OFFSET_MASK};
use crate::backend::{check_range, BlockError};

impl Qcow2 {
    /// Host bytes for `len` bytes of compressed data: after the previous compressed cluster
    /// when it fits in the same host cluster (one more reference to it), else a new cluster.
    fn alloc_compressed(&mut self, len: u64) -> Result<u64, BlockError> {
        if let Some((cl, used)) = self.ctail {
            if used + len <= self.cs && self.h.refcount_order > 0 {
                let idx = cl / self.cs;
                if self.rc.get(&*self.file, idx)?
                    < super::refcount::max_refcount(self.h.refcount_order)
                {
                    self.rc.adjust(&*self.file, idx, true)?;
                    self.ctail = Some((cl, used + len));
                    return Ok(cl + used);
                }
            }
        }
        let cl = self.alloc_cluster()? << self.h.cluster_bits;
        self.ctail = Some((cl, len));
        Ok(cl)
    }

    /// Writes the whole cluster at `offset` (cluster aligned; `buf` is one cluster, or the
    /// rest of the disk for the last one) compressed with deflate. Data that does not shrink
    /// is written as a normal cluster.
    pub fn write_compressed(&mut self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.writable()?;
        check_range(offset, buf.len() as u64, self.h.size)?;
        let whole = (self.h.size - offset).min(self.cs);
        if !offset.is_multiple_of(self.cs) || buf.len() as u64 != whole {
            return Err(BlockError::Unsupported {
                path: self.file.path().to_path_buf(),
                what: format!(
                    "a compressed write of {} bytes at {offset:#x} (whole clusters only)",
                    buf.len()
                ),
            });
        }
        let mut input = vec![0u8; self.cs as usize];
        input[..buf.len()].copy_from_slice(buf);
        let mut out = vec![0u8; self.cs as usize];
        let mut c = Compress::new(Compression::default(), false);
        let st = c.compress(&input, &mut out, FlushCompress::Finish);
        let len = c.total_out();
        if !matches!(st, Ok(Status::StreamEnd)) || len + 512 >= self.cs {
            return self.write_at_plain(buf, offset);
        }
        let (l2off, l2i) = self.l2_for_write(offset)?;
        let (old, _) = self.l2_entry(l2off, l2i)?;
        let host = self.alloc_compressed(len)?;
        self.file.write_checked(&out[..len as usize], host)?;
        let x = 62 - (self.h.cluster_bits - 8);
        let sectors = ((host + len - 1) >> 9) - (host >> 9);
        self.set_l2_entry(l2off, l2i, COMPRESSED | (sectors << x) | host)?;
        if old & COMPRESSED != 0 || old & L2_OFFSET_MASK != 0 {
            self.pending_free.push(old);
        }
        self.ccache = None;
        self.needs_sync = true;
        Ok(())
    }
}
