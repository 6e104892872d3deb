//! virtio-vsock (device type 19), implemented in the VMM and bridged to Unix sockets on the
//! host as Firecracker does (see [`muxer`] for the convention).
//!
//! Three queues: rx (0), tx (1), event (2). The config space is the guest's CID (le64).
//! Stream sockets only; any other type gets a RST. Every packet the guest sends is checked
//! ([`packet`]: chain, header, CIDs, length) and a bad one is dropped and counted; credit flow
//! control is honoured both ways with bounded buffering ([`conn`]).

pub(crate) mod conn;
mod deadline;
mod muxer;
pub mod packet;
mod socket;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_type, read_config_bytes, ActivateError, Poller, VirtioDevice, VirtioInterrupt,
    WorkerThread, F_RING_EVENT_IDX, F_VERSION_1,
};
pub use conn::CONN_BUF;
pub use muxer::{parse_connect, CONNECT_TIMEOUT, LINE_TIMEOUT, MAX_CONNS, MAX_RESETS};
pub use socket::{connect_nonblocking, Listener, SocketError, MAX_PATH};
use worker::VsockWorker;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// Lock-free counters of a vsock device.
#[derive(Debug, Default)]
pub struct VsockStats {
    /// Connections established or requested (both directions), since start.
    pub connections: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Bytes from the guest written to host sockets.
    pub to_host_bytes: AtomicU64,
    /// Bytes from host sockets given to the guest.
    pub to_guest_bytes: AtomicU64,
    /// Packets or chains refused (bad chain, header, CID, type, op, credit exceeded).
    pub refused: AtomicU64,
    /// Resets sent to the guest.
    pub resets: AtomicU64,
    /// Host connections closed because the guest did not answer their REQUEST in time.
    pub connect_timeouts: AtomicU64,
    /// Host sockets closed because they did not send their CONNECT line in time.
    pub line_timeouts: AtomicU64,
}

/// Why a vsock device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// A reserved or out-of-range CID.
    #[error("vsock cid {0}: must be 3 to 4294967294 (0, 1, 2 and 4294967295 are reserved)")]
    Cid(u64),
    /// The listening socket.
    #[error("vsock socket {0}")]
    Socket(#[from] SocketError),
}

/// Whether `cid` can be a guest's CID (0 hypervisor, 1 local, 2 host, u32::MAX any are not).
pub fn valid_cid(cid: u64) -> bool {
    (3..u64::from(u32::MAX)).contains(&cid)
}

/// A virtio-vsock device.
pub struct Vsock {
    cid: u64,
    listener: Listener,
    stats: Arc<VsockStats>,
    worker: Option<WorkerThread>,
}

impl Vsock {
    /// A device for guest `cid` listening on the Unix socket `path` (a stale socket there is
    /// replaced; anything else is refused).
    pub fn new(cid: u64, path: &Path) -> Result<Self, VsockError> {
        if !valid_cid(cid) {
            return Err(VsockError::Cid(cid));
        }
        Ok(Vsock {
            cid,
            listener: Listener::bind(path)?,
            stats: Arc::default(),
            worker: None,
        })
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<VsockStats> {
        self.stats.clone()
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The listening socket's path.
    pub fn path(&self) -> PathBuf {
        self.listener.path().to_path_buf()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn name(&self) -> &'static str {
        "virtio-vsock"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let [rx, tx, event]: [Queue; 3] = match queues.try_into() {
            Ok(q) if events.len() == 3 => q,
            _ => {
                return Err(ActivateError::QueueCount {
                    device: "virtio-vsock",
                    got,
                    want: 3,
                })
            }
        };
        let worker_err = |source| ActivateError::Worker {
            device: "virtio-vsock",
            source,
        };
        let poller = Poller::new().map_err(worker_err)?;
        let listener = self.listener.try_clone().map_err(worker_err)?;
        let muxer = muxer::Muxer::new(
            self.cid,
            self.path(),
            listener,
            poller.clone(),
            self.stats.clone(),
        )
        .map_err(worker_err)?;
        let handler = VsockWorker {
            mem,
            rx,
            tx,
            _event: event,
            cid: self.cid,
            muxer,
            interrupt,
            stats: self.stats.clone(),
            log: crate::legacy::GuestLog::default(),
            tx_stalled: false,
            buf: Vec::new(),
        };
        let w = WorkerThread::spawn_polled("virtio-vsock", poller, events, handler)
            .map_err(worker_err)?;
        self.worker = Some(w);
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping the worker closes every connection's host socket.
        self.worker = None;
    }
}

#[cfg(test)]
mod harness;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod reset_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timeout_tests;
