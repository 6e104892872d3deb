//! qcow2 metadata upkeep: cluster allocation, the ordered flush, and replacing the refcount
//! structure (growth, repair, dirty images).

use super::refcount::{self, AllocError, REFT_OFFSET_MASK};
use std::collections::HashSet;

use super::header::incompat;
use super::{Qcow2, Qcow2Error, COMPRESSED, L1_OFFSET_MASK, L2_OFFSET_MASK};
use crate::backend::BlockError;

impl Qcow2 {
    /// Refuses writing when refcount blocks overlap other metadata (writes would damage it).
    pub(super) fn check_refblock_overlaps(&self) -> Result<(), Qcow2Error> {
        let l2s: HashSet<u64> = self
            .l1
            .iter()
            .map(|e| e & L1_OFFSET_MASK)
            .filter(|&o| o != 0)
            .collect();
        let mut seen = HashSet::new();
        for (i, e) in self.rc.table.iter().enumerate() {
            let off = e & REFT_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if self.is_fixed_metadata(off) || l2s.contains(&off) || !seen.insert(off) {
                return Err(Qcow2Error::Block(self.corrupt(format!(
                    "refcount block {i} at {off:#x} overlaps other metadata; refusing to write (repair with qemu-img check -r all)"
                ))));
            }
        }
        Ok(())
    }

    /// Clears unknown autoclear bits and rebuilds refcounts of a dirty image.
    pub(super) fn prepare_for_writing(&mut self) -> Result<(), Qcow2Error> {
        self.check_refblock_overlaps()?;
        if self.h.version == 3 && self.h.autoclear != 0 {
            self.h.autoclear = 0;
            self.file.write_checked(&0u64.to_be_bytes(), 88)?;
            self.file.sync_checked()?;
        }
        if self.h.incompatible & incompat::DIRTY != 0 {
            let refs = self.compute_refs(false)?;
            if let Some(e) = refs.errors.first() {
                return Err(Qcow2Error::Block(
                    self.corrupt(format!("dirty image cannot be rebuilt: {e}")),
                ));
            }
            self.install_counts(refs.counts)?;
            self.h.incompatible &= !incompat::DIRTY;
            self.file
                .write_checked(&self.h.incompatible.to_be_bytes(), 72)?;
            self.file.sync_checked()?;
        }
        Ok(())
    }

    /// Whether the cluster at `off` is the header, the L1 table or the refcount table.
    pub(super) fn is_fixed_metadata(&self, off: u64) -> bool {
        let within = |start: u64, len: u64| off >= start && off < start.saturating_add(len);
        off < self.cs
            || within(self.h.l1_table_offset, u64::from(self.h.l1_size) * 8)
            || within(
                self.h.refcount_table_offset,
                u64::from(self.h.refcount_table_clusters) * self.cs,
            )
    }

    /// Recomputes the set of L2 table and refcount block offsets.
    pub(super) fn rebuild_meta_set(&mut self) {
        self.meta.clear();
        for &e in &self.l1 {
            let off = e & L1_OFFSET_MASK;
            if off != 0 {
                self.meta.insert(off);
            }
        }
        self.refblocks.clear();
        for &e in &self.rc.table {
            let off = e & REFT_OFFSET_MASK;
            if off != 0 {
                self.meta.insert(off);
                self.refblocks.insert(off);
            }
        }
        self.rc.new_blocks.clear();
    }

    /// Allocates one cluster (refcount written through, not yet synced); returns its index.
    pub(super) fn alloc_cluster(&mut self) -> Result<u64, BlockError> {
        for _ in 0..4 {
            match self.rc.alloc(&*self.file, self.end.div_ceil(self.cs)) {
                Ok(idx) => {
                    for b in self.rc.new_blocks.drain(..) {
                        self.meta.insert(b);
                        self.refblocks.insert(b);
                        self.end = self.end.max(b + self.cs);
                    }
                    let off = idx << self.h.cluster_bits;
                    if self.is_fixed_metadata(off) || self.meta.contains(&off) {
                        return Err(self
                            .corrupt(format!("refcounts say metadata cluster {off:#x} is free")));
                    }
                    self.end = self.end.max(off + self.cs);
                    self.needs_sync = true;
                    return Ok(idx);
                }
                Err(AllocError::TableFull) => self.grow_refcounts()?,
                Err(AllocError::Block(e)) => return Err(e),
            }
        }
        Err(self.corrupt("cluster allocation did not converge".into()))
    }

    /// Replaces a full refcount table by a bigger structure at the end of the file.
    fn grow_refcounts(&mut self) -> Result<(), BlockError> {
        let clusters = self.end.div_ceil(self.cs);
        let mut counts = self.rc.read_all(&*self.file, clusters)?;
        let old_table = self.h.refcount_table_offset / self.cs;
        for c in old_table..old_table + u64::from(self.h.refcount_table_clusters) {
            if let Some(v) = counts.get_mut(c as usize) {
                *v = 0;
            }
        }
        for &e in &self.rc.table {
            let off = e & REFT_OFFSET_MASK;
            if let Some(v) = counts
                .get_mut((off / self.cs) as usize)
                .filter(|_| off != 0)
            {
                *v = 0;
            }
        }
        self.install_counts(counts)
    }

    /// Writes a fresh refcount structure describing `counts` (which must not include the old
    /// structure) after the end of the file, then points the header at it.
    pub(super) fn install_counts(&mut self, mut counts: Vec<u64>) -> Result<(), BlockError> {
        let start = self.end.div_ceil(self.cs);
        let lay = refcount::layout(
            &mut counts,
            start,
            self.h.cluster_bits,
            self.h.refcount_order,
        )
        .map_err(|e| self.corrupt(e))?;
        for (off, block) in &lay.blocks {
            self.file.write_checked(block, *off)?;
        }
        let mut raw = Vec::with_capacity(lay.table.len() * 8);
        for e in &lay.table {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        self.file.write_checked(&raw, lay.table_offset)?;
        self.file.sync_checked()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&lay.table_offset.to_be_bytes());
        hdr[8..].copy_from_slice(&(lay.table_clusters as u32).to_be_bytes());
        self.file.write_checked(&hdr, 48)?;
        self.file.sync_checked()?;
        self.h.refcount_table_offset = lay.table_offset;
        self.h.refcount_table_clusters = lay.table_clusters as u32;
        let end = lay.table_offset + (lay.table_clusters + lay.blocks.len() as u64) * self.cs;
        self.end = self.end.max(end);
        self.rc.reset(lay.table, lay.table_offset);
        self.rebuild_meta_set();
        Ok(())
    }

    /// Drops one reference for each cluster an old L2 entry used.
    fn free_entry(&mut self, e: u64) -> Result<(), BlockError> {
        let (first, last) = if e & COMPRESSED != 0 {
            let (host, len) = self.compressed_range(e);
            (host / self.cs, (host + len.max(1) - 1) / self.cs)
        } else {
            let off = e & L2_OFFSET_MASK;
            (off / self.cs, off / self.cs)
        };
        for c in first..=last {
            if c != 0 {
                self.rc.adjust(&*self.file, c, false)?;
            }
        }
        Ok(())
    }

    /// The ordered flush: data and refcounts, then L2 tables, then L1, then frees.
    pub(super) fn flush_metadata(&mut self) -> Result<(), BlockError> {
        let dirty_l2 = self.l2.dirty();
        // Refcounts first: they must be durable before any table points to their clusters.
        self.rc.write_dirty(&*self.file)?;
        if dirty_l2.is_empty() && self.l1_dirty.is_empty() && self.pending_free.is_empty() {
            if self.needs_sync {
                self.file.sync_checked()?;
                self.needs_sync = false;
            }
            return Ok(());
        }
        self.file.sync_checked()?;
        for off in &dirty_l2 {
            let t = self.l2.get_mut(*off).expect("dirty table is cached");
            let (start, raw) = t.take_dirty_bytes();
            self.file.write_checked(&raw, *off + start as u64)?;
        }
        if !dirty_l2.is_empty() {
            self.file.sync_checked()?;
        }
        if !self.l1_dirty.is_empty() {
            for i in std::mem::take(&mut self.l1_dirty) {
                let at = self.h.l1_table_offset + i as u64 * 8;
                self.file.write_checked(&self.l1[i].to_be_bytes(), at)?;
            }
            self.file.sync_checked()?;
        }
        let frees = std::mem::take(&mut self.pending_free);
        if !frees.is_empty() {
            // A freed host cluster may be reused: never pack more compressed data into it.
            self.ctail = None;
        }
        for e in &frees {
            self.free_entry(*e)?;
        }
        // Lost decrements would only leak clusters: written now, synced by the next flush.
        self.rc.write_dirty(&*self.file)?;
        self.needs_sync = !frees.is_empty();
        Ok(())
    }
}
