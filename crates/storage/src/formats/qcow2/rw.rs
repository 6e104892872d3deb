//! qcow2 guest reads and writes: mapping through L1/L2, compressed clusters, copy-on-write.

use flate2::{Decompress, FlushDecompress, Status};

use super::{Map, Qcow2, COMPRESSED, COPIED, L1_OFFSET_MASK, L2_OFFSET_MASK, ZERO_FLAG};
use crate::backend::BlockError;

impl Qcow2 {
    fn l1_index(&self, guest: u64) -> usize {
        (guest >> (self.h.cluster_bits + self.l2_bits)) as usize
    }

    fn l2_index(&self, guest: u64) -> usize {
        ((guest >> self.h.cluster_bits) & ((1 << self.l2_bits) - 1)) as usize
    }

    /// Loads (through the cache) the L2 table at `off` and returns entry `i` (and its bitmap
    /// word with extended L2).
    pub(super) fn l2_entry(&mut self, off: u64, i: usize) -> Result<(u64, u64), BlockError> {
        self.load_l2(off)?;
        let ext = self.ext_l2;
        let t = self.l2.get_mut(off).expect("loaded above");
        let words = if ext {
            (t.entries[2 * i], t.entries[2 * i + 1])
        } else {
            (t.entries[i], 0)
        };
        Ok(words)
    }

    pub(super) fn set_l2_entry(&mut self, off: u64, i: usize, v: u64) -> Result<(), BlockError> {
        self.load_l2(off)?;
        let t = self.l2.get_mut(off).expect("loaded above");
        t.entries[i] = v;
        t.mark(i);
        Ok(())
    }

    pub(super) fn load_l2(&mut self, off: u64) -> Result<(), BlockError> {
        if self.l2.get_mut(off).is_some() {
            return Ok(());
        }
        if !off.is_multiple_of(self.cs)
            || off < self.cs
            || off.checked_add(self.cs).is_none_or(|e| e > self.end)
        {
            return Err(self.corrupt(format!(
                "L2 table at {off:#x} is unaligned, in the header or past the end of the file ({} bytes)",
                self.end
            )));
        }
        if let Some((victim, dirty)) = self.l2.victim() {
            if dirty {
                self.flush_metadata()?;
            }
            self.l2.remove(victim);
        }
        let entries = super::read_table(&*self.file, off, self.cs / 8)?;
        self.l2.insert(off, entries, false);
        Ok(())
    }

    /// Maps guest offset `guest`: what it holds and how many bytes from it share that mapping
    /// (within its cluster or subcluster).
    pub(super) fn map(&mut self, guest: u64) -> Result<(Map, u64), BlockError> {
        let in_cl = guest % self.cs;
        let rest = self.cs - in_cl;
        let Some(&l1e) = self.l1.get(self.l1_index(guest)) else {
            return Ok((Map::Backing, rest));
        };
        let l2off = l1e & L1_OFFSET_MASK;
        if l2off == 0 {
            return Ok((Map::Backing, rest));
        }
        let (e, bitmap) = self.l2_entry(l2off, self.l2_index(guest))?;
        if e & COMPRESSED != 0 {
            return Ok((Map::Compressed(e), rest));
        }
        let host = e & L2_OFFSET_MASK;
        if self.ext_l2 {
            let sc_size = self.cs / 32;
            let sc = in_cl / sc_size;
            let sc_rest = sc_size - in_cl % sc_size;
            if bitmap & (1 << sc) != 0 {
                return Ok((Map::Data(self.data_offset(host, guest)?), sc_rest));
            }
            if bitmap & (1 << (32 + sc)) != 0 {
                return Ok((Map::Zero, sc_rest));
            }
            return Ok((Map::Backing, sc_rest));
        }
        if self.h.version >= 3 && e & ZERO_FLAG != 0 {
            return Ok((Map::Zero, rest));
        }
        if host == 0 {
            return Ok((Map::Backing, rest));
        }
        Ok((Map::Data(self.data_offset(host, guest)?), rest))
    }

    fn data_offset(&self, host: u64, guest: u64) -> Result<u64, BlockError> {
        if !host.is_multiple_of(self.cs) || host >= self.end {
            return Err(self.corrupt(format!(
                "data cluster of guest offset {guest:#x} at host offset {host:#x} is unaligned or past the end of the file ({} bytes)",
                self.end
            )));
        }
        Ok(host + guest % self.cs)
    }

    /// Host offset and length of a compressed cluster's data.
    pub(super) fn compressed_range(&self, e: u64) -> (u64, u64) {
        let x = 62 - (self.h.cluster_bits - 8);
        let host = e & ((1u64 << x) - 1);
        let sectors = ((e >> x) & ((1u64 << (self.h.cluster_bits - 8)) - 1)) + 1;
        (host, (sectors * 512).saturating_sub(host & 511))
    }

    fn decompress(&mut self, e: u64) -> Result<(), BlockError> {
        if self.ccache.as_ref().is_some_and(|(k, _)| *k == e) {
            return Ok(());
        }
        let (host, clen) = self.compressed_range(e);
        if host < self.cs || host >= self.end {
            return Err(self.corrupt(format!(
                "compressed cluster at {host:#x} is in the header or past the end of the file"
            )));
        }
        let mut input = vec![0u8; clen as usize];
        self.file.read_zero_fill(&mut input, host)?;
        let mut out = vec![0u8; self.cs as usize];
        let mut d = Decompress::new(false);
        let st = d.decompress(&input, &mut out, FlushDecompress::Finish);
        let ok = matches!(
            st,
            Ok(Status::StreamEnd) | Ok(Status::Ok) | Ok(Status::BufError)
        );
        if !ok || d.total_out() != self.cs {
            return Err(self.corrupt(format!(
                "compressed cluster at {host:#x} ({clen} bytes) does not inflate to {} bytes",
                self.cs
            )));
        }
        self.ccache = Some((e, out));
        Ok(())
    }

    fn read_backing(&mut self, buf: &mut [u8], guest: u64) -> Result<(), BlockError> {
        match &mut self.backing {
            Some(b) if guest < b.size() => {
                let k = ((b.size() - guest).min(buf.len() as u64)) as usize;
                b.read_at(&mut buf[..k], guest)?;
                buf[k..].fill(0);
                Ok(())
            }
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Reads guest data (range already checked), coalescing contiguous host runs.
    pub(super) fn read_into(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let mut done = 0usize;
        while done < buf.len() {
            let guest = offset + done as u64;
            let (m, run) = self.map(guest)?;
            let mut n = (run as usize).min(buf.len() - done);
            match m {
                Map::Data(host) => {
                    while done + n < buf.len() {
                        match self.map(guest + n as u64)? {
                            (Map::Data(h2), r2) if h2 == host + n as u64 => {
                                n += (r2 as usize).min(buf.len() - done - n);
                            }
                            _ => break,
                        }
                    }
                    self.file.read_zero_fill(&mut buf[done..done + n], host)?;
                }
                Map::Zero => buf[done..done + n].fill(0),
                Map::Backing => self.read_backing(&mut buf[done..done + n], guest)?,
                Map::Compressed(e) => {
                    self.decompress(e)?;
                    let in_cl = (guest % self.cs) as usize;
                    let data = &self.ccache.as_ref().expect("decompressed above").1;
                    buf[done..done + n].copy_from_slice(&data[in_cl..in_cl + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// The L2 table (offset, index) for a write to `guest`, allocating the table if needed.
    pub(super) fn l2_for_write(&mut self, guest: u64) -> Result<(u64, usize), BlockError> {
        let l1i = self.l1_index(guest);
        let l2i = self.l2_index(guest);
        let Some(&l1e) = self.l1.get(l1i) else {
            return Err(self.corrupt(format!("L1 index {l1i} beyond the L1 table")));
        };
        let off = l1e & L1_OFFSET_MASK;
        if off != 0 {
            if self.is_fixed_metadata(off) || self.refblocks.contains(&off) {
                return Err(self.corrupt(format!(
                    "L1 entry {l1i} points at metadata ({off:#x}) as its L2 table; refusing to write"
                )));
            }
            if l1e & COPIED == 0 {
                return Err(BlockError::Unsupported {
                    path: self.file.path().to_path_buf(),
                    what: format!("writing through the shared L2 table at {off:#x}"),
                });
            }
            return Ok((off, l2i));
        }
        let noff = self.alloc_cluster()? << self.h.cluster_bits;
        self.file
            .write_checked(&vec![0u8; self.cs as usize], noff)?;
        if let Some((victim, dirty)) = self.l2.victim() {
            if dirty {
                self.flush_metadata()?;
            }
            self.l2.remove(victim);
        }
        self.l2
            .insert(noff, vec![0u64; (self.cs / 8) as usize], false);
        self.meta.insert(noff);
        self.l1[l1i] = noff | COPIED;
        self.l1_dirty.insert(l1i);
        self.needs_sync = true;
        Ok((noff, l2i))
    }

    /// Host offset of `guest` when its cluster can be overwritten in place.
    fn in_place(&mut self, guest: u64) -> Result<Option<u64>, BlockError> {
        let Some(&l1e) = self.l1.get(self.l1_index(guest)) else {
            return Ok(None);
        };
        let l2off = l1e & L1_OFFSET_MASK;
        if l2off == 0 || l1e & COPIED == 0 || self.ext_l2 {
            return Ok(None);
        }
        let (e, _) = self.l2_entry(l2off, self.l2_index(guest))?;
        let host = e & L2_OFFSET_MASK;
        let zero = self.h.version >= 3 && e & ZERO_FLAG != 0;
        if e & COPIED == 0 || e & COMPRESSED != 0 || host == 0 || zero {
            return Ok(None);
        }
        if self.meta.contains(&host) || self.is_fixed_metadata(host) {
            return Ok(None);
        }
        Ok(Some(self.data_offset(host, guest)?))
    }

    /// The contiguous host stretch holding `[offset, offset+len)`, if there is one that an
    /// I/O engine may access directly.
    pub(super) fn contiguous_host(
        &mut self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<Option<u64>, BlockError> {
        let mut covered = 0u64;
        let mut start = None;
        while covered < len {
            let pos = offset + covered;
            let host = if write {
                self.in_place(pos)?
            } else {
                match self.map(pos)? {
                    (Map::Data(h), _) => Some(h),
                    _ => None,
                }
            };
            let Some(h) = host else {
                return Ok(None);
            };
            let first = *start.get_or_insert(h);
            if h != first + covered {
                return Ok(None);
            }
            covered += self.cs - pos % self.cs;
        }
        if write {
            self.ccache = None;
            self.needs_sync = true;
        }
        Ok(start)
    }

    /// Where the data of the whole cluster at `guest` goes: in place, or a newly allocated
    /// cluster already entered in the L2 table (the caller writes the data before any flush).
    pub(super) fn place_full_cluster(&mut self, guest: u64) -> Result<u64, BlockError> {
        let (l2off, l2i) = self.l2_for_write(guest)?;
        self.ccache = None;
        self.needs_sync = true;
        if let Some(h) = self.in_place(guest)? {
            return Ok(h);
        }
        let (old, _) = self.l2_entry(l2off, l2i)?;
        let new = self.alloc_cluster()? << self.h.cluster_bits;
        self.set_l2_entry(l2off, l2i, new | COPIED)?;
        if old & COMPRESSED != 0 || old & L2_OFFSET_MASK != 0 {
            self.pending_free.push(old);
        }
        Ok(new)
    }

    /// Writes `data` inside the cluster holding `guest`.
    pub(super) fn write_chunk(&mut self, guest: u64, data: &[u8]) -> Result<(), BlockError> {
        let (l2off, l2i) = self.l2_for_write(guest)?;
        let (old, _) = self.l2_entry(l2off, l2i)?;
        let in_cl = guest % self.cs;
        let host = old & L2_OFFSET_MASK;
        let in_place = old & COPIED != 0 && old & COMPRESSED == 0 && host != 0;
        if in_place && !(self.h.version >= 3 && old & ZERO_FLAG != 0) {
            let h = self.data_offset(host, guest)?;
            if self.meta.contains(&host) || self.is_fixed_metadata(host) {
                return Err(self.corrupt(format!(
                    "data cluster at {host:#x} overlaps metadata; refusing to write"
                )));
            }
            self.ccache = None;
            self.needs_sync = true;
            return self.file.write_checked(data, h);
        }
        let base = guest - in_cl;
        let new = self.alloc_cluster()? << self.h.cluster_bits;
        // The old content is all zero and the new cluster lies past the end of the file (so
        // it reads as zeroes): only the data needs writing, as QEMU does.
        let zero_before = old & COMPRESSED == 0
            && ((self.h.version >= 3 && old & ZERO_FLAG != 0)
                || (host == 0 && self.backing.as_ref().is_none_or(|b| base >= b.size())));
        if zero_before && new >= self.file.len_checked()? {
            self.file.write_checked(data, new + in_cl)?;
        } else {
            let mut cluster = vec![0u8; self.cs as usize];
            if data.len() as u64 != self.cs {
                let n = (self.h.size - base).min(self.cs) as usize;
                self.read_into(&mut cluster[..n], base)?;
            }
            cluster[in_cl as usize..in_cl as usize + data.len()].copy_from_slice(data);
            self.file.write_checked(&cluster, new)?;
        }
        self.set_l2_entry(l2off, l2i, new | COPIED)?;
        if old & COMPRESSED != 0 || host != 0 {
            self.pending_free.push(old);
        }
        self.ccache = None;
        self.needs_sync = true;
        Ok(())
    }

    /// Makes the whole cluster at `base` read as zeroes (`discard`: may keep data instead
    /// when the format cannot express it).
    pub(super) fn zero_cluster(&mut self, base: u64, discard: bool) -> Result<(), BlockError> {
        let has_backing = self.backing.is_some();
        if self.h.version < 3 && has_backing {
            if discard {
                return Ok(());
            }
            let n = (self.h.size - base).min(self.cs) as usize;
            return self.write_chunk(base, &vec![0u8; n]);
        }
        let l1e = self.l1.get(self.l1_index(base)).copied().unwrap_or(0);
        if l1e & L1_OFFSET_MASK == 0 && !has_backing {
            return Ok(());
        }
        let (l2off, l2i) = self.l2_for_write(base)?;
        let (old, _) = self.l2_entry(l2off, l2i)?;
        let new = if has_backing { ZERO_FLAG } else { 0 };
        if old == new {
            return Ok(());
        }
        self.set_l2_entry(l2off, l2i, new)?;
        if old & COMPRESSED != 0 || old & L2_OFFSET_MASK != 0 {
            self.pending_free.push(old);
        }
        self.ccache = None;
        Ok(())
    }
}
