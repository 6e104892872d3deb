//! The virtio-pci common configuration structure and the device-status state machine.
//!
//! Every guest write is checked against the state: features only before FEATURES_OK, queue
//! registers only before DRIVER_OK and while the queue is disabled, FEATURES_OK only for a
//! subset of the offered features that includes VERSION_1, DRIVER_OK only after FEATURES_OK.
//! A refused write is counted and ignored.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::{
    F_VERSION_1, NO_VECTOR, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};

/// What a status write asks the transport to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusAction {
    /// Nothing beyond the status update.
    None,
    /// The driver wrote 0: reset the device.
    Reset,
    /// The driver set DRIVER_OK: activate the device.
    Activate,
}

/// Counters of refused driver actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommonStats {
    /// Writes refused by the state machine, or to unknown registers / with a wrong size.
    pub refused_writes: u64,
    /// FEATURES_OK refused (unknown feature or no VERSION_1).
    pub refused_features: u64,
}

/// The common configuration of one virtio-pci function.
pub struct CommonConfig {
    status: u8,
    device_features: u64,
    driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    queue_select: u16,
    queues: Vec<Queue>,
    vectors: u16,
    msix_config: Arc<AtomicU16>,
    queue_vectors: Arc<[AtomicU16]>,
    config_generation: Arc<AtomicU8>,
    stats: CommonStats,
}

fn word(v: u64, select: u32) -> u32 {
    match select {
        0 => v as u32,
        1 => (v >> 32) as u32,
        _ => 0,
    }
}

impl CommonConfig {
    /// Queues of `max_sizes`, `vectors` MSI-X vectors, offering `features`.
    pub fn new(max_sizes: &[u16], features: u64, vectors: u16) -> Self {
        let queues = max_sizes.iter().map(|&m| new_queue(m)).collect();
        CommonConfig {
            status: 0,
            device_features: features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            queue_select: 0,
            queues,
            vectors,
            msix_config: Arc::new(AtomicU16::new(NO_VECTOR)),
            queue_vectors: max_sizes
                .iter()
                .map(|_| AtomicU16::new(NO_VECTOR))
                .collect(),
            config_generation: Arc::new(AtomicU8::new(0)),
            stats: CommonStats::default(),
        }
    }

    /// The device status.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Whether the driver set DRIVER_OK (queues may be used).
    pub fn driver_ok(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
    }

    /// Counters of refused actions.
    pub fn stats(&self) -> CommonStats {
        self.stats
    }

    /// The MSI-X vector of configuration changes (shared with the interrupt path).
    pub fn msix_config(&self) -> Arc<AtomicU16> {
        self.msix_config.clone()
    }

    /// The MSI-X vector of each queue (shared with the interrupt path).
    pub fn queue_vectors(&self) -> Arc<[AtomicU16]> {
        self.queue_vectors.clone()
    }

    /// The configuration generation (shared with the interrupt path, which bumps it with every
    /// configuration-change interrupt).
    pub fn config_generation(&self) -> Arc<AtomicU8> {
        self.config_generation.clone()
    }

    /// The queues as the driver configured them.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// Marks the device as needing a reset (the caller raises the configuration interrupt,
    /// which bumps the generation).
    pub fn set_needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
    }

    /// Back to the power-on state (queues, features, vectors, status).
    pub fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = new_queue(q.max_size());
        }
        self.msix_config.store(NO_VECTOR, Ordering::SeqCst);
        for v in self.queue_vectors.iter() {
            v.store(NO_VECTOR, Ordering::SeqCst);
        }
    }

    fn refuse(&mut self) {
        self.stats.refused_writes += 1;
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// Guest read at `offset`; unknown registers and wrong sizes read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let q = self.selected();
        let sel = usize::from(self.queue_select);
        let v: u64 = match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select.into(),
            (0x04, 4) => word(self.device_features, self.device_feature_select).into(),
            (0x08, 4) => self.driver_feature_select.into(),
            (0x0c, 4) => word(self.driver_features, self.driver_feature_select).into(),
            (0x10, 2) => self.msix_config.load(Ordering::SeqCst).into(),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => self.status.into(),
            (0x15, 1) => self.config_generation.load(Ordering::SeqCst).into(),
            (0x16, 2) => self.queue_select.into(),
            (0x18, 2) => q.map_or(0, |q| q.size().into()),
            (0x1a, 2) => self
                .queue_vectors
                .get(sel)
                .map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst))
                .into(),
            (0x1c, 2) => q.map_or(0, |q| q.ready().into()),
            (0x1e, 2) => q.map_or(0, |_| self.queue_select.into()),
            (0x20 | 0x28 | 0x30, 8) => q.map_or(0, |q| ring_addr(q, offset)),
            (0x20 | 0x28 | 0x30, 4) => q.map_or(0, |q| ring_addr(q, offset) & 0xffff_ffff),
            (0x24 | 0x2c | 0x34, 4) => q.map_or(0, |q| ring_addr(q, offset - 4) >> 32),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// Guest write at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> StatusAction {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) => self.write_driver_features(v as u32),
            (0x10, 2) => self
                .msix_config
                .store(self.vector(v as u16), Ordering::SeqCst),
            (0x14, 1) => return self.write_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            (0x18 | 0x1a | 0x1c | 0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, _) => {
                self.write_queue(offset, data.len(), v)
            }
            _ => self.refuse(),
        }
        StatusAction::None
    }

    fn vector(&self, v: u16) -> u16 {
        if v < self.vectors {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            return self.refuse();
        }
        match self.driver_feature_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => self.refuse(),
        }
    }

    fn write_queue(&mut self, offset: u64, len: usize, v: u64) {
        let sel = usize::from(self.queue_select);
        let driver_ok = self.driver_ok();
        let vector = self.vector(v as u16);
        let Some(q) = self.queues.get_mut(sel) else {
            return self.refuse();
        };
        // The vector may change at any time (Linux sets NO_VECTOR when it frees queues).
        if (offset, len) == (0x1a, 2) {
            if let Some(slot) = self.queue_vectors.get(sel) {
                slot.store(vector, Ordering::SeqCst);
            }
            return;
        }
        if driver_ok || q.ready() {
            return self.refuse();
        }
        let lo = Some(v as u32);
        let ok = match (offset, len) {
            (0x18, 2) => q.try_set_size(v as u16).is_ok(),
            (0x1c, 2) if v == 1 => {
                q.set_ready(true);
                true
            }
            (0x20, 4) => set_addr(q, 0x20, lo, None),
            (0x24, 4) => set_addr(q, 0x20, None, lo),
            (0x28, 4) => set_addr(q, 0x28, lo, None),
            (0x2c, 4) => set_addr(q, 0x28, None, lo),
            (0x30, 4) => set_addr(q, 0x30, lo, None),
            (0x34, 4) => set_addr(q, 0x30, None, lo),
            (0x20 | 0x28 | 0x30, 8) => set_addr(q, offset, lo, Some((v >> 32) as u32)),
            _ => false,
        };
        if !ok {
            self.refuse();
        }
    }

    fn write_status(&mut self, v: u8) -> StatusAction {
        if v == 0 {
            return StatusAction::Reset;
        }
        let old = self.status;
        // The driver only sets bits; NEEDS_RESET is the device's own.
        if v & old & !STATUS_NEEDS_RESET != old & !STATUS_NEEDS_RESET {
            self.refuse();
            return StatusAction::None;
        }
        let mut new = (v & !STATUS_NEEDS_RESET) | (old & STATUS_NEEDS_RESET);
        let added = new & !old;
        if added & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            self.stats.refused_features += 1;
            new &= !STATUS_FEATURES_OK;
        }
        if added & STATUS_DRIVER_OK != 0 && new & STATUS_FEATURES_OK == 0 {
            self.refuse();
            new &= !STATUS_DRIVER_OK;
        }
        self.status = new;
        if new & STATUS_DRIVER_OK != 0 && added & STATUS_DRIVER_OK != 0 && new & STATUS_FAILED == 0
        {
            StatusAction::Activate
        } else {
            StatusAction::None
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0 && self.driver_features & F_VERSION_1 != 0
    }
}

fn new_queue(max: u16) -> Queue {
    // Queue::new fails only for a maximum that is 0, above 32768 or not a power of two; the
    // devices pass constants that are none of those.
    Queue::new(max).unwrap_or_else(|_| Queue::new(256).expect("256 is a valid queue size"))
}

fn ring_addr(q: &Queue, offset: u64) -> u64 {
    match offset {
        0x20 => q.desc_table(),
        0x28 => q.avail_ring(),
        _ => q.used_ring(),
    }
}

fn set_addr(q: &mut Queue, which: u64, lo: Option<u32>, hi: Option<u32>) -> bool {
    match which {
        0x20 => q.set_desc_table_address(lo, hi),
        0x28 => q.set_avail_ring_address(lo, hi),
        _ => q.set_used_ring_address(lo, hi),
    }
    true
}

#[cfg(test)]
#[path = "common_tests.rs"]
mod tests;
