//! The device's counters: reads and writes count their bytes and operations exactly; failed,
//! flush and unsupported requests move only their own counters.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::*;
use crate::virtio::fuzz::NoInterrupt;
use crate::virtio::testmem::*;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};

/// Chain at `head`: header (type, sector) at `hdr`, one data buffer, a status byte.
fn request(ring: &mut TestRing, head: u16, ty: u32, sector: u64, data: (u64, u32)) {
    let hdr = 0x1_0000 + u64::from(head) * 16;
    ring.write(hdr, ty);
    ring.write(hdr + 4, 0u32);
    ring.write(hdr + 8, sector);
    let status = 0x3_0000 + u64::from(head);
    ring.write(status, 0xffu8);
    let data_flags = if ty == VIRTIO_BLK_T_IN { WRITE } else { 0 };
    ring.desc(head, hdr, 16, NEXT, head + 1);
    if data.1 == 0 {
        ring.desc(head + 1, status, 1, WRITE, 0);
    } else {
        ring.desc(head + 1, data.0, data.1, data_flags | NEXT, head + 2);
        ring.desc(head + 2, status, 1, WRITE, 0);
    }
    ring.push(head);
}

#[test]
fn reads_and_writes_count_bytes_and_operations() {
    let mut ring = TestRing::new(64);
    ring.write_bytes(0x2_0000, &[0x11; 4096]);
    request(&mut ring, 0, VIRTIO_BLK_T_OUT, 8, (0x2_0000, 1536));
    request(&mut ring, 3, VIRTIO_BLK_T_IN, 0, (0x2_1000, 512));
    request(&mut ring, 6, VIRTIO_BLK_T_IN, 4, (0x2_2000, 4096));
    request(&mut ring, 9, VIRTIO_BLK_T_FLUSH, 0, (0, 0));
    // Past the end of the 64 KiB disk: fails, counted as failed only.
    request(&mut ring, 12, VIRTIO_BLK_T_IN, 1000, (0x2_3000, 512));
    // An empty write: one operation, no bytes.
    request(&mut ring, 15, VIRTIO_BLK_T_OUT, 0, (0, 0));
    let stats = Arc::new(BlockStats::default());
    let mut w = BlockWorker {
        mem: ring.mem.clone(),
        queue: ring.queue(),
        interrupt: Arc::new(NoInterrupt),
        disk: Arc::new(Mutex::new(AsyncDisk::new(
            Box::new(MemDisk::new(64 * 1024, false)),
            Box::new(storage::io::engine::SyncEngine::default()),
        ))),
        batch: Batch::new(),
        id: [0; ID_BYTES],
        stats: stats.clone(),
        log: GuestLog::default(),
    };
    w.handle_queue(0);
    assert_eq!(ring.used_idx(), 6);
    let get = |c: &AtomicU64| c.load(Relaxed);
    assert_eq!(
        (
            get(&stats.read_ops),
            get(&stats.read_bytes),
            get(&stats.write_ops),
            get(&stats.write_bytes)
        ),
        (2, 512 + 4096, 2, 1536)
    );
    assert_eq!((get(&stats.ok), get(&stats.failed)), (5, 1));
}
