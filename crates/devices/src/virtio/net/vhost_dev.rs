//! The vhost-net data path of [`super::Net`]: at activation the rings are handed to the kernel
//! (see [`super::vhost`]) instead of a worker thread; at reset they are taken back.
//!
//! `/dev/vhost-net` is opened once when the card is made (so a host without it is an error at
//! start-up, not at the guest's first activation) to learn the kernel's features, and then
//! afresh at every activation: a new owner per activation means a reset leaves no ring state
//! behind in the kernel.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::vhost::{memory_regions, ring_addrs, RingConfig, VhostError, VhostNet};
use super::F_MRG_RXBUF;
use crate::virtio::{
    InterruptKind, VirtioInterrupt, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1,
};

/// The features vhost-net implements itself (ring layout and header size); the offloads are
/// the TAP's business and never go to the kernel.
pub const VHOST_RING_FEATURES: u64 =
    F_VERSION_1 | F_RING_EVENT_IDX | F_RING_INDIRECT_DESC | F_MRG_RXBUF;

/// The rings as the kernel serves them, with what must outlive its use of them.
struct Active {
    vhost: VhostNet,
    // Dropped after `vhost` (field order): the kernel holds its own references to the
    // eventfds, and guest memory stays mapped while the descriptor is open.
    _kicks: Vec<EventFd>,
    _calls: Vec<EventFd>,
    _mem: GuestMemoryMmap,
}

/// A card's vhost-net state.
pub(super) struct VhostMode {
    path: PathBuf,
    kernel_features: u64,
    active: Option<Active>,
}

impl VhostMode {
    /// Opens `path` to check that vhost-net is usable and to read its features.
    pub fn probe(path: &Path) -> Result<Self, VhostError> {
        let features = VhostNet::open(path)?.features()?;
        if features & F_VERSION_1 == 0 {
            return Err(VhostError::Missing("VIRTIO_F_VERSION_1"));
        }
        Ok(VhostMode {
            path: path.to_path_buf(),
            kernel_features: features,
            active: None,
        })
    }

    /// A mode that will open `path` at activation, as if the kernel offered `features`.
    #[cfg(test)]
    pub fn for_tests(path: &Path, features: u64) -> Self {
        VhostMode {
            path: path.to_path_buf(),
            kernel_features: features,
            active: None,
        }
    }

    /// The ring features the device offers on this kernel.
    pub fn ring_features(&self) -> u64 {
        self.kernel_features & VHOST_RING_FEATURES
    }

    /// Hands both rings to the kernel with `tap` as their backend. `acked` are the driver's
    /// features (the offloads are already set on the TAP).
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: &Arc<dyn VirtioInterrupt>,
        queues: &[Queue],
        events: Vec<EventFd>,
        acked: u64,
        tap: RawFd,
    ) -> Result<(), String> {
        self.active = None;
        // Check what the guest controls before anything reaches the kernel.
        let mut rings = Vec::new();
        for (i, q) in queues.iter().enumerate() {
            let ring = ring_config(i as u16, q)?;
            rings.push((ring, ring_addrs(&mem, &ring).map_err(|e| e.to_string())?));
        }
        let mut calls = Vec::new();
        for (ring, _) in &rings {
            let call = interrupt
                .irqfd(InterruptKind::Queue(ring.index))
                .ok_or_else(|| format!("queue {} has no MSI-X vector", ring.index))?;
            calls.push(call);
        }
        let e = |e: VhostError| e.to_string();
        let vhost = VhostNet::open(&self.path).map_err(e)?;
        vhost
            .set_features(acked & self.ring_features())
            .map_err(e)?;
        vhost
            .set_mem_table(&memory_regions(&mem).map_err(e)?)
            .map_err(e)?;
        for (((ring, host), kick), call) in rings.iter().zip(&events).zip(&calls) {
            vhost
                .set_vring(ring, host, kick.as_raw_fd(), call.as_raw_fd())
                .map_err(e)?;
        }
        for (ring, _) in &rings {
            vhost.set_backend(ring.index, Some(tap)).map_err(e)?;
        }
        self.active = Some(Active {
            vhost,
            _kicks: events,
            _calls: calls,
            _mem: mem,
        });
        Ok(())
    }

    /// Detaches the TAP from the rings and closes the kernel's side (the device can be
    /// activated again).
    pub fn reset(&mut self) {
        let Some(a) = self.active.take() else {
            return;
        };
        for i in 0..2 {
            let r = a
                .vhost
                .set_backend(i, None)
                .and_then(|()| a.vhost.vring_base(i));
            if let Err(e) = r {
                tracing::warn!("virtio-net: vhost-net ring {i} did not stop cleanly: {e}");
            }
        }
    }
}

/// The guest's configuration of queue `index`: it must be enabled.
fn ring_config(index: u16, q: &Queue) -> Result<RingConfig, String> {
    if !q.ready() {
        return Err(format!("queue {index} is not enabled"));
    }
    Ok(RingConfig {
        index,
        size: q.size(),
        desc: q.desc_table(),
        avail: q.avail_ring(),
        used: q.used_ring(),
    })
}
