//! The virtio-net queue handling for the fuzz targets (crate::virtio::fuzz): the worker's tx and
//! rx processing on a ring the fuzzer writes, with a backend in memory.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryMmap, VolatileSlice};

use super::worker::NetQueues;
use super::{NetBackend, MAX_FRAME};
use crate::virtio::VirtioInterrupt;

/// Frames of the given lengths to read; what is written is checked and forgotten.
struct MemBackend {
    frames: VecDeque<usize>,
}

impl NetBackend for MemBackend {
    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let len = self.frames.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let mut left = len;
        for b in bufs {
            let n = left.min(b.len());
            // A TAP writes every byte it reports, as this does.
            b.copy_from(&vec![0x5a; n]);
            left -= n;
        }
        Ok(len - left)
    }

    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        assert!(
            len <= MAX_FRAME,
            "a tx frame of {len} bytes reached the backend"
        );
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        -1
    }

    fn set_offload(&mut self, _features: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Serves `queue` as the tx queue on `tx_mem`, then `rx_queue` as the rx queue on `rx_mem`
/// with frames of `frames` bytes waiting (with mergeable rx buffers if `mergeable`). Returns
/// the chains returned and the frames the guest got.
pub(crate) fn serve_for_fuzz(
    tx_mem: GuestMemoryMmap,
    tx_queue: Queue,
    rx_mem: GuestMemoryMmap,
    rx_queue: Queue,
    frames: Vec<usize>,
    mergeable: bool,
    interrupt: Arc<dyn VirtioInterrupt>,
) -> (usize, u64) {
    let idle = || Queue::new(16).expect("16 is a valid queue size");
    let backend: Box<dyn NetBackend> = Box::new(MemBackend {
        frames: frames.into(),
    });
    let backend = Arc::new(Mutex::new(backend));
    let queues = |mem, rx, tx| NetQueues {
        mem,
        rx,
        tx,
        backend: backend.clone(),
        interrupt: interrupt.clone(),
        stats: Arc::default(),
        mergeable,
        held: Default::default(),
        bounce: vec![0; MAX_FRAME + 1],
        pending: None,
        log: crate::legacy::GuestLog::default(),
    };
    let mut tx = queues(tx_mem, idle(), tx_queue);
    tx.process_tx();
    let mut rx = queues(rx_mem, rx_queue, idle());
    rx.process_rx();
    let count = |q: &NetQueues| {
        let s = &q.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        get(&s.tx_frames) + get(&s.tx_drops) + get(&s.rx_frames) + get(&s.rx_drops)
    };
    let got = rx
        .stats
        .rx_frames
        .load(std::sync::atomic::Ordering::Relaxed);
    ((count(&tx) + count(&rx)) as usize, got)
}
