//! virtio-net on a [`NetBackend`] (a TAP device in production, see [`tap`]).
//!
//! Two queues, receive (0) and transmit (1), no control queue. Every frame carries the 12-byte
//! `virtio_net_hdr_v1` (VERSION_1 is mandatory), passed through unchanged to and from the
//! backend, whose offloads are set from the features the guest accepted at activation. The
//! backend reads and writes frames in guest memory itself (readv/writev on the TAP into the
//! checked buffers of a chain); only rx chains smaller than the largest frame get theirs
//! through a bounce buffer. With mergeable rx buffers (offered on both paths) a frame spans as
//! many rx chains as it needs; without them an rx chain too small for a frame gets nothing and
//! the frame is dropped and counted.
//!
//! With [`Net::with_vhost`] the kernel's vhost-net serves the rings instead of the worker
//! ([`vhost`]); the device then also offers indirect descriptors, as the kernel implements
//! them, and counts no frames (the VMM never sees them).

mod frame;
mod fuzz;
mod rx;
pub mod tap;
pub mod vhost;
mod vhost_dev;
mod worker;

use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::{GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_type, read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, F_RING_EVENT_IDX,
    F_VERSION_1,
};
pub use frame::{rx_chain, tx_slices, FrameError, RxChain};
pub(crate) use fuzz::serve_for_fuzz;
pub use tap::{Tap, TapError};
pub use vhost::{VhostError, VHOST_NET_PATH};
pub use vhost_dev::VHOST_RING_FEATURES;

/// Size of the virtio-net header (`virtio_net_hdr_v1`, with `num_buffers`).
pub const HDR_LEN: usize = 12;
/// Largest frame with its header: 64 KiB of GSO payload plus Ethernet and header.
pub const MAX_FRAME: usize = 65562;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

/// Feature: the device handles partial checksums (guest to host).
pub const F_CSUM: u64 = 1 << 0;
/// Feature: the driver handles partial checksums (host to guest).
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// Feature: the driver can merge rx buffers (a frame spans several rx chains).
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// Feature: the device has a MAC address in its config.
pub const F_MAC: u64 = 1 << 5;
/// Feature: the driver takes TCPv4 segments.
pub const F_GUEST_TSO4: u64 = 1 << 7;
/// Feature: the driver takes TCPv6 segments.
pub const F_GUEST_TSO6: u64 = 1 << 8;
/// Feature: the driver takes TSO segments with ECN.
pub const F_GUEST_ECN: u64 = 1 << 9;
/// Feature: the device takes TCPv4 segments.
pub const F_HOST_TSO4: u64 = 1 << 11;
/// Feature: the device takes TCPv6 segments.
pub const F_HOST_TSO6: u64 = 1 << 12;
/// Feature: the device takes TSO segments with ECN.
pub const F_HOST_ECN: u64 = 1 << 13;
/// Feature: the config has a link status field.
pub const F_STATUS: u64 = 1 << 16;
/// Link status: up.
pub const S_LINK_UP: u16 = 1;

/// The offload features the device offers (what a TAP with a vnet header accepts).
pub const OFFLOAD_FEATURES: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_ECN;

/// Where frames go to and come from.
pub trait NetBackend: Send + 'static {
    /// Reads one frame (header included) into `bufs`, in order; `WouldBlock` when none is
    /// waiting. Returns the bytes read: a frame longer than `bufs` is cut, as a TAP does, so
    /// a caller that must know gives one byte more than the largest frame.
    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;
    /// Writes one frame (header included) gathered from `bufs`, in order.
    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<()>;
    /// A descriptor that polls readable when a frame is waiting (non-blocking).
    fn raw_fd(&self) -> RawFd;
    /// Enables the offloads of the guest's accepted `features` (virtio-net bits).
    fn set_offload(&mut self, features: u64) -> io::Result<()>;
}

/// Lock-free counters of a net device.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Bytes given to the guest (headers excluded).
    pub rx_bytes: AtomicU64,
    /// Frames given to the guest.
    pub rx_frames: AtomicU64,
    /// Frames from the backend dropped (rx chain too small, or queued at a reset), and bad rx
    /// chains returned unused: with `rx_frames`, every rx chain returned.
    pub rx_drops: AtomicU64,
    /// Bytes sent by the guest (headers excluded).
    pub tx_bytes: AtomicU64,
    /// Frames sent by the guest.
    pub tx_frames: AtomicU64,
    /// Guest frames dropped (bad chain or backend error).
    pub tx_drops: AtomicU64,
}

/// A virtio-net device.
pub struct Net {
    backend: Arc<Mutex<Box<dyn NetBackend>>>,
    mac: [u8; 6],
    acked: u64,
    stats: Arc<NetStats>,
    worker: Option<worker::NetWorker>,
    vhost: Option<vhost_dev::VhostMode>,
}

impl Net {
    /// A device with address `mac` on `backend`.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Self {
        Net {
            backend: Arc::new(Mutex::new(backend)),
            mac,
            acked: 0,
            stats: Arc::default(),
            worker: None,
            vhost: None,
        }
    }

    /// A device whose rings the kernel's vhost-net (at `vhost_path`, normally
    /// [`VHOST_NET_PATH`]) serves, on the TAP `backend`; fails when vhost-net cannot be opened
    /// or lacks VIRTIO_F_VERSION_1.
    pub fn with_vhost(
        backend: Box<dyn NetBackend>,
        mac: [u8; 6],
        vhost_path: &Path,
    ) -> Result<Self, VhostError> {
        let mode = vhost_dev::VhostMode::probe(vhost_path)?;
        let mut net = Net::new(backend, mac);
        net.vhost = Some(mode);
        Ok(net)
    }

    /// Whether the kernel's vhost-net serves the rings (its frames are not counted).
    pub fn uses_vhost(&self) -> bool {
        self.vhost.is_some()
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// The device's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// A locally administered unicast MAC derived from `seed` (FNV-1a), the same for the same seed.
pub fn mac_from_seed(seed: &[u8]) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in seed {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    // 0x02: locally administered, bit 0 clear: unicast.
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let ring = match &self.vhost {
            Some(v) => v.ring_features(),
            None => F_VERSION_1 | F_RING_EVENT_IDX | F_MRG_RXBUF,
        };
        ring | F_MAC | F_STATUS | OFFLOAD_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status (le16), max_virtqueue_pairs (le16).
        let mut cfg = [0u8; 10];
        cfg[..6].copy_from_slice(&self.mac);
        cfg[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        read_config_bytes(&cfg, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let [rx, tx]: [Queue; 2] = match queues.try_into() {
            Ok(q) if events.len() == 2 => q,
            _ => {
                return Err(ActivateError::QueueCount {
                    device: "virtio-net",
                    got,
                    want: 2,
                })
            }
        };
        let fd = {
            let mut b = self.backend.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = b.set_offload(self.acked) {
                tracing::warn!(
                    "virtio-net: cannot set the TAP offloads {:#x}: {e}",
                    self.acked
                );
            }
            b.raw_fd()
        };
        if let Some(v) = &mut self.vhost {
            let queues = [rx, tx];
            return v
                .activate(mem, &interrupt, &queues, events, self.acked, fd)
                .map_err(|reason| ActivateError::Backend {
                    device: "virtio-net (vhost)",
                    reason,
                });
        }
        let queues = worker::NetQueues {
            mem,
            rx,
            tx,
            backend: self.backend.clone(),
            interrupt,
            stats: self.stats.clone(),
            mergeable: self.acked & F_MRG_RXBUF != 0,
            held: Default::default(),
            bounce: vec![0; MAX_FRAME + 1],
            pending: None,
            log: crate::legacy::GuestLog::default(),
        };
        let w = worker::NetWorker::spawn(queues, events, fd).map_err(|source| {
            ActivateError::Worker {
                device: "virtio-net",
                source,
            }
        })?;
        self.worker = Some(w);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        if let Some(v) = &mut self.vhost {
            v.reset();
        }
        self.acked = 0;
        self.quiesce_backend();
    }
}

/// Most frames a reset drops from the backend (a TAP's queue holds 1000 by default); bounds the
/// time a reset takes on the vCPU thread.
const RESET_DRAIN_FRAMES: usize = 4096;

impl Net {
    /// With no driver, the backend offers no offloads and holds no frames: the next driver may
    /// accept fewer offloads than the last, and frames the TAP queued meanwhile were built with
    /// the old ones (a GSO frame to a driver that did not accept TSO). Dropped frames count as
    /// rx drops, as a NIC without a driver drops what arrives.
    fn quiesce_backend(&mut self) {
        let mut b = self.backend.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = b.set_offload(0) {
            tracing::warn!("virtio-net: cannot clear the TAP offloads at reset: {e}");
        }
        let mut buf = vec![0; MAX_FRAME];
        let mut dropped = 0;
        while dropped < RESET_DRAIN_FRAMES {
            match b.read_frame(&[VolatileSlice::from(&mut buf[..])]) {
                Ok(_) => dropped += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.stats
            .rx_drops
            .fetch_add(dropped as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
