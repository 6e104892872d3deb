//! qcow2 refcounts: the refcount table, a bounded cache of refcount blocks, cluster
//! allocation, and the layout of a fresh refcount structure (growth, repair, creation).

use std::collections::HashMap;

use crate::backend::BlockError;
use crate::file::ImageFile;

/// Mask of the offset bits in a refcount table entry.
pub const REFT_OFFSET_MASK: u64 = !0x1ff;
const BLOCK_CACHE: usize = 64;

/// Reads entry `i` of a refcount block of width `1 << order` bits.
pub fn get_entry(block: &[u8], order: u32, i: usize) -> u64 {
    let bits = 1usize << order;
    match order {
        0..=2 => {
            let bit = i * bits;
            let byte = block.get(bit / 8).copied().unwrap_or(0);
            u64::from(byte >> (bit % 8)) & ((1 << bits) - 1)
        }
        _ => {
            let w = bits / 8;
            let Some(s) = block.get(i * w..i * w + w) else {
                return 0;
            };
            s.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        }
    }
}

/// Writes entry `i` of a refcount block; `v` must fit in the width.
pub fn set_entry(block: &mut [u8], order: u32, i: usize, v: u64) {
    let bits = 1usize << order;
    match order {
        0..=2 => {
            let bit = i * bits;
            let mask = (((1u16 << bits) - 1) as u8) << (bit % 8);
            if let Some(b) = block.get_mut(bit / 8) {
                *b = (*b & !mask) | (((v as u8) << (bit % 8)) & mask);
            }
        }
        _ => {
            let w = bits / 8;
            if let Some(s) = block.get_mut(i * w..i * w + w) {
                s.copy_from_slice(&v.to_be_bytes()[8 - w..]);
            }
        }
    }
}

/// The largest refcount a width can hold.
pub fn max_refcount(order: u32) -> u64 {
    if order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << order)) - 1
    }
}

/// Why an allocation could not proceed in place.
pub enum AllocError {
    /// The refcount table is full: lay out a bigger one, then retry.
    TableFull,
    /// I/O or corruption.
    Block(BlockError),
}

impl From<BlockError> for AllocError {
    fn from(e: BlockError) -> Self {
        AllocError::Block(e)
    }
}

/// The live refcount structure of an open image.
pub struct Refcounts {
    /// Refcount table entries (offsets of refcount blocks; 0 = none).
    pub table: Vec<u64>,
    /// Offset of the refcount table in the file.
    pub table_offset: u64,
    order: u32,
    cluster_bits: u32,
    cache: HashMap<u64, Vec<u8>>,
    /// Where the next free-cluster search starts (cluster index).
    pub hint: u64,
    /// Offsets of refcount blocks created since the owner last looked.
    pub new_blocks: Vec<u64>,
    /// Cached blocks changed since they were last written, with the changed byte range.
    dirty: std::collections::BTreeMap<u64, (usize, usize)>,
}

impl Refcounts {
    /// Wraps a table read from the file.
    pub fn new(table: Vec<u64>, table_offset: u64, order: u32, cluster_bits: u32) -> Self {
        Refcounts {
            table,
            table_offset,
            order,
            cluster_bits,
            cache: HashMap::new(),
            hint: 0,
            new_blocks: Vec::new(),
            dirty: std::collections::BTreeMap::new(),
        }
    }

    /// Entries per refcount block.
    pub fn per_block(&self) -> u64 {
        (1u64 << (self.cluster_bits + 3)) >> self.order
    }

    fn corrupt(file: &dyn ImageFile, detail: String) -> BlockError {
        BlockError::Corrupt {
            path: file.path().to_path_buf(),
            detail,
        }
    }

    /// Offset of the refcount block covering cluster `idx` (0: none); `None` past the table.
    fn block_offset(&self, file: &dyn ImageFile, idx: u64) -> Result<Option<u64>, BlockError> {
        let bi = idx / self.per_block();
        let Some(&e) = usize::try_from(bi).ok().and_then(|b| self.table.get(b)) else {
            return Ok(None);
        };
        let off = e & REFT_OFFSET_MASK;
        let cs = 1u64 << self.cluster_bits;
        if off == 0 {
            return Ok(Some(0));
        }
        if !off.is_multiple_of(cs) || off < cs {
            return Err(Self::corrupt(
                file,
                format!("refcount block {bi} at {off:#x} is unaligned or in the header"),
            ));
        }
        Ok(Some(off))
    }

    fn load(&mut self, file: &dyn ImageFile, off: u64) -> Result<&mut Vec<u8>, BlockError> {
        if !self.cache.contains_key(&off) {
            if self.cache.len() >= BLOCK_CACHE {
                let victim = self
                    .cache
                    .keys()
                    .find(|k| !self.dirty.contains_key(k))
                    .copied();
                let victim = match victim {
                    Some(v) => v,
                    None => {
                        self.write_dirty(file)?;
                        *self.cache.keys().next().expect("cache is full")
                    }
                };
                self.cache.remove(&victim);
            }
            let flen = file.len_checked()?;
            let cs = 1u64 << self.cluster_bits;
            if off.checked_add(cs).is_none_or(|e| e > flen) {
                return Err(Self::corrupt(
                    file,
                    format!(
                        "refcount block at {off:#x} is past the end of the file ({flen} bytes)"
                    ),
                ));
            }
            let mut b = vec![0u8; cs as usize];
            file.read_exact_at(&mut b, off)?;
            self.cache.insert(off, b);
        }
        Ok(self.cache.get_mut(&off).expect("inserted above"))
    }

    /// Refcount of cluster `idx` (0 when no block covers it).
    pub fn get(&mut self, file: &dyn ImageFile, idx: u64) -> Result<u64, BlockError> {
        match self.block_offset(file, idx)? {
            None | Some(0) => Ok(0),
            Some(off) => {
                let order = self.order;
                let i = (idx % self.per_block()) as usize;
                Ok(get_entry(self.load(file, off)?, order, i))
            }
        }
    }

    /// Sets the refcount of cluster `idx` in the cached block (written by [`Refcounts::write_dirty`]).
    /// The block must exist.
    pub fn set(&mut self, file: &dyn ImageFile, idx: u64, v: u64) -> Result<(), BlockError> {
        if v > max_refcount(self.order) {
            return Err(Self::corrupt(
                file,
                format!("refcount of cluster {idx} would overflow"),
            ));
        }
        let off = match self.block_offset(file, idx)? {
            Some(o) if o != 0 => o,
            _ => {
                return Err(Self::corrupt(
                    file,
                    format!("no refcount block covers cluster {idx}"),
                ))
            }
        };
        let order = self.order;
        let i = (idx % self.per_block()) as usize;
        let block = self.load(file, off)?;
        set_entry(block, order, i, v);
        // Written back by write_dirty(), before the metadata that needs it.
        let byte = (i << order) / 8;
        let r = self.dirty.entry(off).or_insert((byte, byte));
        *r = (r.0.min(byte), r.1.max(byte));
        Ok(())
    }

    /// Adds `delta` (+1 or -1) to cluster `idx`'s refcount.
    pub fn adjust(&mut self, file: &dyn ImageFile, idx: u64, inc: bool) -> Result<(), BlockError> {
        let cur = self.get(file, idx)?;
        let new = if inc {
            cur.checked_add(1)
        } else {
            cur.checked_sub(1)
        }
        .ok_or_else(|| {
            Self::corrupt(
                file,
                format!("refcount of cluster {idx} ({cur}) would wrap"),
            )
        })?;
        self.set(file, idx, new)?;
        if !inc && new == 0 && idx < self.hint {
            self.hint = idx;
        }
        Ok(())
    }

    /// Allocates one free cluster (refcount 0 -> 1, cached until written back) and
    /// returns its index.
    /// `end` is the end of the file in clusters: refcounts claiming clusters far past it are
    /// corruption, not a reason to scan on.
    pub fn alloc(&mut self, file: &dyn ImageFile, end: u64) -> Result<u64, AllocError> {
        let mut idx = self.hint.max(1);
        loop {
            if idx > end.saturating_add(1 << 20) {
                return Err(AllocError::Block(Self::corrupt(
                    file,
                    format!(
                        "refcounts claim clusters far past the end of the file ({end} clusters)"
                    ),
                )));
            }
            let off = match self.block_offset(file, idx)? {
                None => return Err(AllocError::TableFull),
                Some(o) => o,
            };
            if off == 0 {
                // The whole range is free: make `idx` its own self-describing refcount block.
                let bi = idx / self.per_block();
                let cs = 1u64 << self.cluster_bits;
                let mut block = vec![0u8; cs as usize];
                set_entry(&mut block, self.order, (idx % self.per_block()) as usize, 1);
                let boff = idx << self.cluster_bits;
                file.write_checked(&block, boff)?;
                // The block must be durable before the table points to it.
                file.sync_checked()?;
                self.cache.insert(boff, block);
                self.table[bi as usize] = boff;
                self.new_blocks.push(boff);
                file.write_checked(&boff.to_be_bytes(), self.table_offset + bi * 8)?;
                idx += 1;
                continue;
            }
            if self.get(file, idx)? == 0 {
                self.set(file, idx, 1)?;
                self.hint = idx + 1;
                return Ok(idx);
            }
            idx += 1;
        }
    }

    /// Writes every changed block (not synced).
    pub fn write_dirty(&mut self, file: &dyn ImageFile) -> Result<(), BlockError> {
        for (off, (lo, hi)) in std::mem::take(&mut self.dirty) {
            if let Some(b) = self.cache.get(&off) {
                // Whole 4 KiB units around the change (no read-modify-write with O_DIRECT).
                let unit = 4096.min(b.len());
                let start = lo / unit * unit;
                let end = (hi + 8).next_multiple_of(unit).min(b.len());
                file.write_checked(&b[start..end], off + start as u64)?;
            }
        }
        Ok(())
    }

    /// Drops cached blocks (after the structure was replaced).
    pub fn reset(&mut self, table: Vec<u64>, table_offset: u64) {
        self.table = table;
        self.table_offset = table_offset;
        self.cache.clear();
        self.dirty.clear();
        self.hint = 0;
    }

    /// Reads every refcount the structure holds, for clusters `0..clusters`.
    pub fn read_all(
        &mut self,
        file: &dyn ImageFile,
        clusters: u64,
    ) -> Result<Vec<u64>, BlockError> {
        let mut out = Vec::with_capacity(clusters as usize);
        for idx in 0..clusters {
            out.push(self.get(file, idx)?);
        }
        Ok(out)
    }
}

/// A refcount structure laid out in memory, ready to be written.
pub struct Layout {
    /// Offset of the new table.
    pub table_offset: u64,
    /// Table clusters.
    pub table_clusters: u64,
    /// Table entries (block offsets).
    pub table: Vec<u64>,
    /// Blocks: (offset, content).
    pub blocks: Vec<(u64, Vec<u8>)>,
}

/// Lays out a refcount structure describing `counts` (per cluster) plus itself, placed from
/// cluster `start` on. Adds the structure's own clusters to `counts`.
pub fn layout(
    counts: &mut Vec<u64>,
    start: u64,
    cluster_bits: u32,
    order: u32,
) -> Result<Layout, String> {
    let cs = 1u64 << cluster_bits;
    let per_block = (cs * 8) >> order;
    let start = start.max(counts.len() as u64).max(1);
    let (mut nt, mut nb) = (1u64, 1u64);
    loop {
        // Room for twice the current size, so growth is rare.
        let total = (start + nt + nb) * 2;
        let need_b = total.div_ceil(per_block);
        let need_t = (need_b * 8).div_ceil(cs);
        if need_b <= nb && need_t <= nt {
            break;
        }
        nb = nb.max(need_b);
        nt = nt.max(need_t);
    }
    if nt * cs > super::header::MAX_REFTABLE_BYTES {
        return Err(format!("refcount table of {nt} clusters is too large"));
    }
    let end = start + nt + nb;
    counts.resize(end as usize, 0);
    for c in start..end {
        counts[c as usize] += 1;
    }
    let max = max_refcount(order);
    let mut table = vec![0u64; (nt * cs / 8) as usize];
    let mut blocks = Vec::new();
    for b in 0..nb {
        let first = b * per_block;
        let off = (start + nt + b) * cs;
        let mut block = vec![0u8; cs as usize];
        for i in 0..per_block {
            let v = counts.get((first + i) as usize).copied().unwrap_or(0);
            if v > max {
                return Err(format!(
                    "cluster {} has refcount {v}, above the width's maximum {max}",
                    first + i
                ));
            }
            set_entry(&mut block, order, i as usize, v);
        }
        table[b as usize] = off;
        blocks.push((off, block));
    }
    Ok(Layout {
        table_offset: start * cs,
        table_clusters: nt,
        table,
        blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_every_width() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let max = max_refcount(order);
            let n = (512 * 8) >> order;
            for i in 0..n {
                set_entry(&mut block, order, i, (i as u64 * 7 + 3) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_entry(&block, order, i),
                    (i as u64 * 7 + 3) & max,
                    "order {order} i {i}"
                );
            }
        }
    }

    #[test]
    fn layout_counts_itself() {
        let mut counts = vec![1u64; 10];
        let l = layout(&mut counts, 10, 9, 4).unwrap();
        assert_eq!(l.table_offset, 10 * 512);
        for (off, block) in &l.blocks {
            let c = off / 512;
            let b = c / 256;
            assert_eq!(get_entry(&l.blocks[b as usize].1, 4, (c % 256) as usize), 1);
            assert_eq!(block.len(), 512);
        }
        assert!(counts.len() as u64 >= 10 + l.table_clusters + l.blocks.len() as u64);
    }
}
