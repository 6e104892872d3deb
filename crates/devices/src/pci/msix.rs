//! MSI-X: the capability, the vector table and the pending-bit array.
//!
//! A vector that is masked (by its entry or by the function mask) when its interrupt fires gets
//! its pending bit set instead; unmasking it delivers the interrupt and clears the bit (Linux
//! masks vectors while it moves their affinity; losing that interrupt would hang I/O).
//! Routes are pushed to the [`MsiSink`] when a vector becomes deliverable with a message the sink
//! has not seen yet, so a guest rewriting a masked entry costs no routing update per write.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Length of the MSI-X capability.
pub const MSIX_CAP_LEN: usize = 12;
/// Size of one table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors one function may have (the table-size field is 11 bits).
pub const MSIX_MAX_VECTORS: u16 = 2048;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_MASKED: u32 = 1;

/// An MSI message: what a write of `data` to `address` means to the interrupt controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Where MSI-X vectors go: implemented by the VMM (an irqfd per vector, bound to an MSI route).
pub trait MsiSink: Send + Sync {
    /// Routes `vector` to `msg` from now on.
    fn set_route(&self, vector: u16, msg: MsiMessage) -> std::io::Result<()>;
    /// Delivers `vector` (its route was set before).
    fn fire(&self, vector: u16) -> std::io::Result<()>;
    /// An eventfd whose every write delivers `vector` without passing through this MSI-X
    /// state (a KVM irqfd), for back-ends that run outside the VMM (vhost); `None` when the
    /// sink has none. Writes to it are not held back while the vector is masked.
    fn irqfd(&self, vector: u16) -> Option<EventFd> {
        let _ = vector;
        None
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
    /// The message changed since it was last given to the sink.
    dirty: bool,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: ENTRY_MASKED,
            dirty: true,
        }
    }
}

impl Entry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }
}

/// Counters of one function's MSI-X.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MsixStats {
    /// Interrupts delivered.
    pub fired: u64,
    /// Interrupts left pending because their vector was masked.
    pub pended: u64,
    /// Interrupts dropped because MSI-X was disabled or the vector does not exist.
    pub dropped: u64,
    /// Sink failures (route updates or deliveries).
    pub errors: u64,
}

/// The MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pba: Vec<u64>,
    enabled: bool,
    function_mask: bool,
    sink: Arc<dyn MsiSink>,
    stats: MsixStats,
}

impl Msix {
    /// `vectors` entries (clamped to 1..=2048), all masked, MSI-X disabled.
    pub fn new(vectors: u16, sink: Arc<dyn MsiSink>) -> Self {
        let n = vectors.clamp(1, MSIX_MAX_VECTORS);
        Msix {
            entries: vec![Entry::default(); usize::from(n)],
            pba: vec![0; usize::from(n).div_ceil(64)],
            enabled: false,
            function_mask: false,
            sink,
            stats: MsixStats::default(),
        }
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Size in bytes of the table.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size in bytes of the pending-bit array.
    pub fn pba_size(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// The capability bytes (table in BAR `table_bar` at `table_off`, PBA in `pba_bar` at
    /// `pba_off`; offsets 8-byte aligned) and its write mask (enable and function mask only).
    pub fn capability(
        &self,
        table_bar: u8,
        table_off: u32,
        pba_bar: u8,
        pba_off: u32,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut c = vec![MSIX_CAP_ID, 0];
        c.extend_from_slice(&(self.vectors() - 1).to_le_bytes());
        c.extend_from_slice(&((table_off & !7) | u32::from(table_bar & 7)).to_le_bytes());
        c.extend_from_slice(&((pba_off & !7) | u32::from(pba_bar & 7)).to_le_bytes());
        let mut m = vec![0; MSIX_CAP_LEN];
        m[3] = 0xc0;
        (c, m)
    }

    /// The guest wrote the capability's message control (already masked to its writable bits).
    pub fn set_control(&mut self, ctrl: u16) {
        self.enabled = ctrl & CTRL_ENABLE != 0;
        self.function_mask = ctrl & CTRL_FUNCTION_MASK != 0;
        self.sync_all();
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `vector` is masked (by its entry or the function mask); true for a missing one.
    pub fn masked(&self, vector: u16) -> bool {
        match self.entries.get(usize::from(vector)) {
            Some(e) => self.function_mask || e.ctrl & ENTRY_MASKED != 0,
            None => true,
        }
    }

    /// Whether `vector`'s pending bit is set.
    pub fn pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: u16, on: bool) {
        let v = usize::from(vector);
        if let Some(w) = self.pba.get_mut(v / 64) {
            if on {
                *w |= 1 << (v % 64);
            } else {
                *w &= !(1 << (v % 64));
            }
        }
    }

    /// The sink's eventfd for `vector` (see [`MsiSink::irqfd`]); its route is pushed now if the
    /// vector is deliverable, as it is on every unmask.
    pub fn irqfd(&mut self, vector: u16) -> Option<EventFd> {
        if usize::from(vector) >= self.entries.len() {
            return None;
        }
        self.sync(vector);
        self.sink.irqfd(vector)
    }

    /// Counters so far.
    pub fn stats(&self) -> MsixStats {
        self.stats
    }

    /// Raises `vector`: delivered now, or left pending while masked.
    pub fn trigger(&mut self, vector: u16) {
        if !self.enabled || usize::from(vector) >= self.entries.len() {
            self.stats.dropped += 1;
            return;
        }
        if self.masked(vector) {
            self.set_pending(vector, true);
            self.stats.pended += 1;
            return;
        }
        self.deliver(vector);
    }

    fn deliver(&mut self, vector: u16) {
        if !self.push_route(vector) {
            return;
        }
        match self.sink.fire(vector) {
            Ok(()) => self.stats.fired += 1,
            Err(e) => self.sink_error("deliver", vector, &e),
        }
    }

    /// Gives the sink the vector's message if it changed; false on failure.
    fn push_route(&mut self, vector: u16) -> bool {
        let Some(e) = self.entries.get(usize::from(vector)).copied() else {
            return false;
        };
        if !e.dirty {
            return true;
        }
        match self.sink.set_route(vector, e.message()) {
            Ok(()) => {
                self.entries[usize::from(vector)].dirty = false;
                true
            }
            Err(err) => {
                self.sink_error("route", vector, &err);
                false
            }
        }
    }

    fn sink_error(&mut self, what: &str, vector: u16, err: &std::io::Error) {
        self.stats.errors += 1;
        if self.stats.errors == 1 {
            tracing::warn!(
                "msi-x: cannot {what} vector {vector}: {err} (further failures are only counted)"
            );
        }
    }

    /// After any mask or enable change: pushes routes of deliverable vectors and delivers those
    /// that were pending.
    fn sync_all(&mut self) {
        for v in 0..self.vectors() {
            self.sync(v);
        }
    }

    fn sync(&mut self, vector: u16) {
        if !self.enabled || self.masked(vector) {
            return;
        }
        if self.pending(vector) {
            self.set_pending(vector, false);
            self.deliver(vector);
        } else {
            self.push_route(vector);
        }
    }

    /// Guest read of the table. Only aligned 4- and 8-byte reads inside the table are answered;
    /// others read as all ones.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let word = |off: u64| -> Option<u32> {
            let e = self
                .entries
                .get(usize::try_from(off / MSIX_ENTRY_SIZE).ok()?)?;
            Some(match off % MSIX_ENTRY_SIZE {
                0 => e.addr_lo,
                4 => e.addr_hi,
                8 => e.data,
                _ => e.ctrl,
            })
        };
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                if let Some(w) = word(offset) {
                    data.copy_from_slice(&w.to_le_bytes());
                }
            }
            8 if offset.is_multiple_of(8) => {
                if let (Some(lo), Some(hi)) = (word(offset), word(offset + 4)) {
                    data[..4].copy_from_slice(&lo.to_le_bytes());
                    data[4..].copy_from_slice(&hi.to_le_bytes());
                }
            }
            _ => {}
        }
    }

    /// Guest write to the table (aligned 4- or 8-byte writes; others are ignored). Returns
    /// false for an ignored write.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> bool {
        match (
            data.len(),
            <[u8; 4]>::try_from(data.get(..4).unwrap_or(&[])),
        ) {
            (4, Ok(w)) if offset.is_multiple_of(4) => {
                self.write_word(offset, u32::from_le_bytes(w))
            }
            (8, Ok(lo)) if offset.is_multiple_of(8) => {
                let hi = <[u8; 4]>::try_from(&data[4..8]).map(u32::from_le_bytes);
                let ok = self.write_word(offset, u32::from_le_bytes(lo));
                ok && hi.is_ok_and(|hi| self.write_word(offset + 4, hi))
            }
            _ => false,
        }
    }

    fn write_word(&mut self, offset: u64, v: u32) -> bool {
        let Ok(idx) = usize::try_from(offset / MSIX_ENTRY_SIZE) else {
            return false;
        };
        let Some(e) = self.entries.get_mut(idx) else {
            return false;
        };
        match offset % MSIX_ENTRY_SIZE {
            0 => (e.addr_lo, e.dirty) = (v, e.dirty || e.addr_lo != v),
            4 => (e.addr_hi, e.dirty) = (v, e.dirty || e.addr_hi != v),
            8 => (e.data, e.dirty) = (v, e.dirty || e.data != v),
            _ => e.ctrl = v & ENTRY_MASKED,
        }
        self.sync(idx as u16);
        true
    }

    /// Guest read of the pending-bit array (aligned 4- or 8-byte reads; others read all ones).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(w) = usize::try_from(offset / 8)
            .ok()
            .and_then(|i| self.pba.get(i))
        else {
            return;
        };
        let bytes = w.to_le_bytes();
        match (data.len(), offset % 8) {
            (8, 0) => data.copy_from_slice(&bytes),
            (4, o @ (0 | 4)) => data.copy_from_slice(&bytes[o as usize..o as usize + 4]),
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "msix_tests.rs"]
mod tests;
