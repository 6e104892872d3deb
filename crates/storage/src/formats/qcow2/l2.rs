//! A bounded write-back cache of qcow2 L2 tables.

use std::collections::HashMap;

/// One cached L2 table.
pub struct Table {
    /// Raw entries (two words per entry with extended L2).
    pub entries: Vec<u64>,
    /// Changed since it was last written.
    pub dirty: bool,
    /// Changed words: `lo..=hi` (meaningful while dirty).
    lo: usize,
    hi: usize,
    last_use: u64,
}

impl Table {
    /// Records a change of word `i`.
    pub fn mark(&mut self, i: usize) {
        if self.dirty {
            self.lo = self.lo.min(i);
            self.hi = self.hi.max(i);
        } else {
            (self.lo, self.hi, self.dirty) = (i, i, true);
        }
    }

    /// The changed bytes to write back, widened to whole 4 KiB units: (byte offset, bytes).
    pub fn take_dirty_bytes(&mut self) -> (usize, Vec<u8>) {
        let total = self.entries.len() * 8;
        let unit = 4096.min(total);
        let start = (self.lo * 8) / unit * unit;
        let end = ((self.hi + 1) * 8).next_multiple_of(unit).min(total);
        let mut raw = Vec::with_capacity(end - start);
        for e in &self.entries[start / 8..end / 8] {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        self.dirty = false;
        (start, raw)
    }
}

/// L2 tables by their offset in the file, at most `capacity` of them.
pub struct L2Cache {
    tables: HashMap<u64, Table>,
    capacity: usize,
    clock: u64,
}

impl L2Cache {
    /// A cache holding at most `capacity` tables (at least 2).
    pub fn new(capacity: usize) -> Self {
        L2Cache {
            tables: HashMap::new(),
            capacity: capacity.max(2),
            clock: 0,
        }
    }

    /// The table at `off`, if cached (marks it used).
    pub fn get_mut(&mut self, off: u64) -> Option<&mut Table> {
        self.clock += 1;
        let clock = self.clock;
        let t = self.tables.get_mut(&off)?;
        t.last_use = clock;
        Some(t)
    }

    /// Whether inserting one more table needs an eviction, and of which (dirty) table.
    pub fn victim(&self) -> Option<(u64, bool)> {
        if self.tables.len() < self.capacity {
            return None;
        }
        self.tables
            .iter()
            .min_by_key(|(_, t)| (t.dirty, t.last_use))
            .map(|(&k, t)| (k, t.dirty))
    }

    /// Drops the table at `off`.
    pub fn remove(&mut self, off: u64) {
        self.tables.remove(&off);
    }

    /// Caches a table (the caller evicted first if needed).
    pub fn insert(&mut self, off: u64, entries: Vec<u64>, dirty: bool) {
        self.clock += 1;
        self.tables.insert(
            off,
            Table {
                lo: 0,
                hi: entries.len().saturating_sub(1),
                entries,
                dirty,
                last_use: self.clock,
            },
        );
    }

    /// Offsets of the dirty tables, sorted.
    pub fn dirty(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .tables
            .iter()
            .filter(|(_, t)| t.dirty)
            .map(|(&k, _)| k)
            .collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_clean_least_recent_first() {
        let mut c = L2Cache::new(2);
        c.insert(512, vec![0; 4], true);
        c.insert(1024, vec![0; 4], false);
        assert_eq!(c.victim(), Some((1024, false)));
        c.get_mut(1024).unwrap().mark(3);
        c.get_mut(512);
        assert_eq!(c.victim(), Some((1024, true)));
        assert_eq!(c.dirty(), vec![512, 1024]);
    }

    #[test]
    fn dirty_bytes_cover_the_changes_in_4k_units() {
        let mut c = L2Cache::new(2);
        c.insert(0, (0..2048u64).collect(), false);
        let t = c.get_mut(0).unwrap();
        t.mark(600);
        t.mark(520);
        let (start, raw) = t.take_dirty_bytes();
        assert_eq!((start, raw.len()), (4096, 4096));
        assert_eq!(&raw[..8], &512u64.to_be_bytes());
        assert!(!t.dirty);
    }
}
