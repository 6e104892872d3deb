//! qcow2 consistency check: count every reference to every cluster and compare with the
//! stored refcounts; repair by writing a fresh refcount structure.

use super::refcount::REFT_OFFSET_MASK;
use super::{read_table, Qcow2, COMPRESSED, COPIED, L1_OFFSET_MASK, L2_OFFSET_MASK};
use crate::backend::BlockError;

/// What a check found (and fixed).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Metadata errors and refcounts lower than the references (data at risk).
    pub corruptions: u64,
    /// Clusters with a refcount but fewer references (space lost, data safe).
    pub leaks: u64,
    /// Leaks and refcount errors fixed by a repair.
    pub fixed: u64,
    /// One line per finding.
    pub messages: Vec<String>,
}

/// Reference counts computed from the metadata.
pub(super) struct Refs {
    pub counts: Vec<u64>,
    pub errors: Vec<String>,
    /// (cluster index, COPIED flag) for every active L2 table and data cluster.
    pub copied: Vec<(u64, bool)>,
}

struct Walk {
    refs: Refs,
    flen: u64,
    cs: u64,
}

impl Walk {
    fn inc(&mut self, off: u64, len: u64, what: &str) -> bool {
        let end = off.checked_add(len.max(1));
        if end.is_none_or(|e| e > self.flen.next_multiple_of(self.cs)) {
            self.refs.errors.push(format!(
                "{what} at {off:#x} (length {len}) is past the end of the file"
            ));
            return false;
        }
        let last = (off + len.max(1) - 1) / self.cs;
        for c in off / self.cs..=last {
            if let Some(v) = self.refs.counts.get_mut(c as usize) {
                *v += 1;
            }
        }
        true
    }
}

impl Qcow2 {
    fn walk_l1(&mut self, w: &mut Walk, l1: &[u64], active: bool) -> Result<(), BlockError> {
        let step = if self.ext_l2 { 2 } else { 1 };
        let mut seen = std::collections::HashSet::new();
        for (i, &e) in l1.iter().enumerate() {
            let off = e & L1_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if !seen.insert(off) {
                // Twice in one L1 table: an error, and no reason to read the table again.
                w.refs.errors.push(format!(
                    "L1 entry {i}: L2 table {off:#x} is already used by this L1 table"
                ));
                w.inc(off, self.cs, "L2 table");
                continue;
            }
            if !off.is_multiple_of(self.cs) {
                w.refs.errors.push(format!(
                    "L1 entry {i}: L2 table offset {off:#x} is unaligned"
                ));
                continue;
            }
            if !w.inc(off, self.cs, "L2 table") {
                continue;
            }
            if active {
                w.refs.copied.push((off / self.cs, e & COPIED != 0));
            }
            let l2 = read_table(&*self.file, off, self.cs / 8)?;
            for (j, &le) in l2.iter().step_by(step).enumerate() {
                if le & COMPRESSED != 0 {
                    let (host, len) = self.compressed_range(le);
                    w.inc(host, len, "compressed cluster");
                    continue;
                }
                let d = le & L2_OFFSET_MASK;
                if d == 0 {
                    continue;
                }
                if !d.is_multiple_of(self.cs) {
                    w.refs.errors.push(format!(
                        "L2 table {off:#x} entry {j}: data offset {d:#x} is unaligned"
                    ));
                    continue;
                }
                if w.inc(d, self.cs, "data cluster") && active {
                    w.refs.copied.push((d / self.cs, le & COPIED != 0));
                }
            }
        }
        Ok(())
    }

    fn walk_snapshots(&mut self, w: &mut Walk) -> Result<(), BlockError> {
        let mut at = self.h.snapshots_offset;
        let start = at;
        for n in 0..self.h.nb_snapshots {
            let mut fixed = [0u8; 40];
            self.file.read_exact_at(&mut fixed, at)?;
            let be64 = |i: usize| u64::from_be_bytes(fixed[i..i + 8].try_into().expect("8 bytes"));
            let be32 = |i: usize| u32::from_be_bytes(fixed[i..i + 4].try_into().expect("4 bytes"));
            let be16 = |i: usize| u16::from_be_bytes(fixed[i..i + 2].try_into().expect("2 bytes"));
            let (l1_off, l1_size) = (be64(0), be32(8));
            let var = u64::from(be32(36)) + u64::from(be16(12)) + u64::from(be16(14));
            at = at.saturating_add((40 + var).next_multiple_of(8));
            if u64::from(l1_size) * 8 > super::header::MAX_L1_BYTES
                || !l1_off.is_multiple_of(self.cs)
            {
                w.refs.errors.push(format!(
                    "snapshot {n}: L1 table {l1_off:#x} ({l1_size} entries) is invalid"
                ));
                continue;
            }
            if w.inc(l1_off, u64::from(l1_size) * 8, "snapshot L1 table") {
                let l1 = read_table(&*self.file, l1_off, l1_size.into())?;
                self.walk_l1(w, &l1, false)?;
            }
        }
        w.inc(start, at - start, "snapshot table");
        Ok(())
    }

    /// Counts the references to every cluster; `with_refcounts` includes the refcount table
    /// and blocks themselves.
    pub(super) fn compute_refs(&mut self, with_refcounts: bool) -> Result<Refs, BlockError> {
        if !self.read_only {
            self.flush_metadata()?;
        }
        let flen = self.file.len_checked()?;
        let mut w = Walk {
            refs: Refs {
                counts: vec![0; flen.div_ceil(self.cs) as usize],
                errors: Vec::new(),
                copied: Vec::new(),
            },
            flen,
            cs: self.cs,
        };
        w.inc(0, self.cs, "header");
        w.inc(
            self.h.l1_table_offset,
            u64::from(self.h.l1_size) * 8,
            "L1 table",
        );
        let l1 = self.l1.clone();
        self.walk_l1(&mut w, &l1, true)?;
        if self.h.nb_snapshots > 0 {
            self.walk_snapshots(&mut w)?;
        }
        if with_refcounts {
            let rt_len = u64::from(self.h.refcount_table_clusters) * self.cs;
            w.inc(self.h.refcount_table_offset, rt_len, "refcount table");
            for (i, &e) in self.rc.table.clone().iter().enumerate() {
                let off = e & REFT_OFFSET_MASK;
                if off == 0 {
                    continue;
                }
                if !off.is_multiple_of(self.cs) {
                    w.refs.errors.push(format!(
                        "refcount table entry {i}: block {off:#x} is unaligned"
                    ));
                    continue;
                }
                w.inc(off, self.cs, "refcount block");
            }
        }
        Ok(w.refs)
    }

    /// Compares references with stored refcounts; with `repair`, rewrites the refcounts when
    /// only they are wrong (the image must be open read-write).
    pub fn check(&mut self, repair: bool) -> Result<CheckReport, BlockError> {
        let refs = self.compute_refs(true)?;
        let mut r = CheckReport {
            corruptions: refs.errors.len() as u64,
            messages: refs.errors.iter().map(|e| format!("ERROR {e}")).collect(),
            ..CheckReport::default()
        };
        let mut refcount_errors = 0u64;
        for (c, &want) in refs.counts.iter().enumerate() {
            let have = match self.rc.get(&*self.file, c as u64) {
                Ok(v) => v,
                Err(e) => {
                    r.corruptions += 1;
                    r.messages.push(format!("ERROR cluster {c}: {e}"));
                    refcount_errors += 1;
                    continue;
                }
            };
            if have < want {
                r.corruptions += 1;
                refcount_errors += 1;
                r.messages.push(format!(
                    "ERROR cluster {c}: refcount {have} < references {want}"
                ));
            } else if have > want {
                r.leaks += 1;
                r.messages.push(format!(
                    "Leaked cluster {c}: refcount {have} > references {want}"
                ));
            }
        }
        for &(c, flag) in &refs.copied {
            let have = self.rc.get(&*self.file, c).unwrap_or(0);
            if flag != (have == 1) {
                r.corruptions += 1;
                r.messages.push(format!(
                    "ERROR OFLAG_COPIED on cluster {c}: refcount {have}, flag {flag}"
                ));
            }
        }
        if repair && refs.errors.is_empty() && (r.leaks > 0 || refcount_errors > 0) {
            self.writable()?;
            let counts = self.compute_refs(false)?.counts;
            self.install_counts(counts)?;
            let after = self.check(false)?;
            r.fixed = (r.leaks + refcount_errors).saturating_sub(after.leaks + after.corruptions);
            r.messages.push(format!(
                "Repaired: {} leaks and refcount errors fixed",
                r.fixed
            ));
            r.corruptions = after.corruptions;
            r.leaks = after.leaks;
        }
        Ok(r)
    }
}
