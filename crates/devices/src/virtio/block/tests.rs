use super::*;
use crate::virtio::testmem::*;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::GuestAddress;

const HDR: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;
const DISK: usize = 64 * 1024;

fn header(ring: &TestRing, ty: u32, sector: u64) {
    ring.write(HDR, ty);
    ring.write(HDR + 4, 0u32);
    ring.write(HDR + 8, sector);
}

/// header -> data (len, flags) -> status, at descriptors 0, 1, 2.
fn three(ring: &TestRing, data_len: u32, data_flags: u16) {
    ring.desc(0, HDR, 16, NEXT, 1);
    ring.desc(1, DATA, data_len, data_flags | NEXT, 2);
    ring.desc(2, STATUS, 1, WRITE, 0);
    ring.write(STATUS, 0xffu8);
}

/// Runs chain `head` through `process` against `disk`.
fn run(ring: &TestRing, disk: &mut MemDisk, head: u16) -> (Completion, Option<RequestError>) {
    let mut q = ring.queue();
    let mut r = TestRing::new(ring.size);
    r.mem = ring.mem.clone();
    r.push(head);
    let chain = q
        .pop_descriptor_chain(&ring.mem)
        .expect("a chain is available");
    let id = *b"thinvm-test-serial!!";
    process(&ring.mem, chain, disk, &id)
}

fn status(ring: &TestRing) -> u8 {
    ring.read_bytes(STATUS, 1)[0]
}

fn complete(ring: &TestRing, done: &Completion) {
    if let Some(a) = done.status_addr {
        ring.write(a.0, done.status);
    }
}

#[test]
fn read_copies_sectors_to_the_guest() {
    let ring = TestRing::new(16);
    let mut disk = MemDisk::new(DISK, false);
    header(&ring, VIRTIO_BLK_T_IN, 3);
    three(&ring, 1024, WRITE);
    let (done, err) = run(&ring, &mut disk, 0);
    assert_eq!(err, None);
    assert_eq!(done.status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(done.used_len, 1025);
    assert_eq!(done.status_addr, Some(GuestAddress(STATUS)));
    let got = ring.read_bytes(DATA, 1024);
    assert!(got[..512].iter().all(|&b| b == 3) && got[512..].iter().all(|&b| b == 4));
}

#[test]
fn write_lands_on_the_disk_and_flush_reaches_it() {
    let ring = TestRing::new(16);
    let mut disk = MemDisk::new(DISK, false);
    ring.write_bytes(DATA, &[0xab; 512]);
    header(&ring, VIRTIO_BLK_T_OUT, 5);
    three(&ring, 512, 0);
    let (done, err) = run(&ring, &mut disk, 0);
    assert_eq!((done.status, err), (VIRTIO_BLK_S_OK as u8, None));
    assert_eq!(done.used_len, 1);
    assert!(disk.data.lock().unwrap()[5 * 512..6 * 512]
        .iter()
        .all(|&b| b == 0xab));
    assert_eq!(
        disk.data.lock().unwrap()[6 * 512],
        6,
        "next sector untouched"
    );
    // Flush: header + status only.
    header(&ring, VIRTIO_BLK_T_FLUSH, 0);
    ring.desc(0, HDR, 16, NEXT, 2);
    let (done, err) = run(&ring, &mut disk, 0);
    assert_eq!((done.status, err), (VIRTIO_BLK_S_OK as u8, None));
    assert_eq!(disk.log.lock().unwrap().flushes, 1);
}

#[test]
fn get_id_discard_and_write_zeroes() {
    let ring = TestRing::new(16);
    let mut disk = MemDisk::new(DISK, false);
    header(&ring, VIRTIO_BLK_T_GET_ID, 0);
    three(&ring, 20, WRITE);
    let (done, _) = run(&ring, &mut disk, 0);
    assert_eq!(done.status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(ring.read_bytes(DATA, 20), b"thinvm-test-serial!!");
    assert_eq!(done.used_len, 21);
    for (ty, what) in [(VIRTIO_BLK_T_DISCARD, 0), (VIRTIO_BLK_T_WRITE_ZEROES, 1)] {
        header(&ring, ty, 0);
        ring.write(DATA, 2u64); // sector
        ring.write(DATA + 8, 4u32); // sectors
        ring.write(DATA + 12, 0u32);
        three(&ring, 16, 0);
        let (done, err) = run(&ring, &mut disk, 0);
        assert_eq!((done.status, err), (VIRTIO_BLK_S_OK as u8, None));
        let log = disk.log.lock().unwrap();
        let seen = if what == 0 {
            &log.discards
        } else {
            &log.zeroes
        };
        assert_eq!(seen, &vec![(1024, 2048)]);
    }
    assert!(disk.data.lock().unwrap()[1024..3072]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn unknown_type_is_unsupported() {
    let ring = TestRing::new(16);
    let mut disk = MemDisk::new(DISK, false);
    header(&ring, 0x99, 0);
    three(&ring, 512, 0);
    let (done, err) = run(&ring, &mut disk, 0);
    assert_eq!(
        (done.status, err, done.used_len),
        (VIRTIO_BLK_S_UNSUPP as u8, None, 1)
    );
}

#[test]
fn read_only_disk_refuses_writes() {
    let ring = TestRing::new(16);
    let mut disk = MemDisk::new(DISK, true);
    for ty in [
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
    ] {
        header(&ring, ty, 0);
        ring.write(DATA + 8, 1u32);
        three(&ring, 16 * 32, 0);
        let (done, err) = run(&ring, &mut disk, 0);
        assert_eq!(done.status, VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(err, Some(RequestError::ReadOnly));
    }
    assert_eq!(disk.data.lock().unwrap()[0], 0, "nothing written");
    let dev = Block::new(Box::new(MemDisk::new(DISK, true)), "ro");
    let ro = 1u64 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO;
    assert_ne!(dev.features() & ro, 0);
    let rw = Block::new(Box::new(MemDisk::new(DISK, false)), "rw");
    assert_eq!(rw.features() & ro, 0);
}

#[test]
fn hostile_chains_fail_with_ioerr() {
    let ring = TestRing::new(16);
    let mut disk = MemDisk::new(DISK, false);
    type Setup = Box<dyn Fn(&TestRing)>;
    let cases: Vec<(&str, Setup, RequestError)> = vec![
        (
            "data past the disk",
            Box::new(|r: &TestRing| {
                header(r, VIRTIO_BLK_T_IN, (DISK / 512) as u64 - 1);
                three(r, 1024, WRITE);
            }),
            RequestError::OutOfRange {
                sector: 127,
                bytes: 1024,
                capacity: DISK as u64,
            },
        ),
        (
            "sector overflow",
            Box::new(|r: &TestRing| {
                header(r, VIRTIO_BLK_T_IN, u64::MAX);
                three(r, 512, WRITE);
            }),
            RequestError::OutOfRange {
                sector: u64::MAX,
                bytes: 512,
                capacity: DISK as u64,
            },
        ),
        (
            "read into a read-only buffer",
            Box::new(|r: &TestRing| {
                header(r, VIRTIO_BLK_T_IN, 0);
                three(r, 512, 0);
            }),
            RequestError::WrongDirection {
                index: 1,
                ty: VIRTIO_BLK_T_IN,
            },
        ),
        (
            "write from a write-only buffer",
            Box::new(|r: &TestRing| {
                header(r, VIRTIO_BLK_T_OUT, 0);
                three(r, 512, WRITE);
            }),
            RequestError::WrongDirection {
                index: 1,
                ty: VIRTIO_BLK_T_OUT,
            },
        ),
        (
            "buffer outside guest memory",
            Box::new(|r: &TestRing| {
                header(r, VIRTIO_BLK_T_IN, 0);
                three(r, 512, WRITE);
                r.desc(1, MEM_SIZE - 256, 512, WRITE | NEXT, 2);
            }),
            RequestError::OutsideMemory {
                addr: MEM_SIZE - 256,
                len: 512,
            },
        ),
        (
            "oversized buffer",
            Box::new(|r: &TestRing| {
                header(r, VIRTIO_BLK_T_IN, 0);
                three(r, 512, WRITE);
                r.desc(1, 0, 0x8000_0000, WRITE | NEXT, 2);
            }),
            RequestError::OutsideMemory {
                addr: 0,
                len: 0x8000_0000,
            },
        ),
        (
            "short header",
            Box::new(|r: &TestRing| {
                header(r, VIRTIO_BLK_T_IN, 0);
                three(r, 512, WRITE);
                r.desc(0, HDR, 8, NEXT, 1);
            }),
            RequestError::BadHeader,
        ),
        (
            "partial sector",
            Box::new(|r: &TestRing| {
                header(r, VIRTIO_BLK_T_IN, 0);
                three(r, 100, WRITE);
            }),
            RequestError::Misaligned {
                len: 100,
                what: "the sector size",
            },
        ),
    ];
    for (name, setup, want) in cases {
        setup(&ring);
        let (done, err) = run(&ring, &mut disk, 0);
        assert_eq!(err.as_ref(), Some(&want), "{name}");
        assert_eq!(done.status, VIRTIO_BLK_S_IOERR as u8, "{name}");
        assert_eq!(done.status_addr, Some(GuestAddress(STATUS)), "{name}");
        complete(&ring, &done);
        assert_eq!(status(&ring), VIRTIO_BLK_S_IOERR as u8, "{name}");
    }
}

#[test]
fn looping_or_statusless_chains_are_returned_untouched() {
    let ring = TestRing::new(8);
    let mut disk = MemDisk::new(DISK, false);
    header(&ring, VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 0 -> ...
    ring.desc(0, HDR, 16, NEXT, 1);
    ring.desc(1, DATA, 512, WRITE | NEXT, 0);
    let (done, err) = run(&ring, &mut disk, 0);
    assert_eq!(err, Some(RequestError::Broken));
    assert_eq!((done.status_addr, done.used_len), (None, 0));
    // Next index past the table.
    ring.desc(1, DATA, 512, WRITE | NEXT, 200);
    let (_, err) = run(&ring, &mut disk, 0);
    assert_eq!(err, Some(RequestError::Broken));
    // A chain longer than 4 GiB in total ends early: broken too.
    three(&ring, 512, WRITE);
    ring.desc(1, 0, u32::MAX, WRITE | NEXT, 2);
    let (_, err) = run(&ring, &mut disk, 0);
    assert_eq!(err, Some(RequestError::Broken));
    // Status descriptor not writable.
    three(&ring, 512, WRITE);
    ring.desc(2, STATUS, 1, 0, 0);
    let (done, err) = run(&ring, &mut disk, 0);
    assert_eq!(err, Some(RequestError::NoStatus));
    assert_eq!(done.status_addr, None);
    // Single descriptor: header only, which is not writable.
    ring.desc(0, HDR, 16, 0, 0);
    let (_, err) = run(&ring, &mut disk, 0);
    assert_eq!(err, Some(RequestError::NoStatus));
    assert_eq!(status(&ring), 0xff, "no status was written");
}

#[test]
fn indirect_table_chain_is_served() {
    let ring = TestRing::new(16);
    let mut disk = MemDisk::new(DISK, false);
    header(&ring, VIRTIO_BLK_T_IN, 1);
    let table = 0x50000;
    ring.desc_at(table, 0, HDR, 16, NEXT, 1);
    ring.desc_at(table, 1, DATA, 512, WRITE | NEXT, 2);
    ring.desc_at(table, 2, STATUS, 1, WRITE, 0);
    ring.desc(0, table, 48, INDIRECT, 0);
    let (done, err) = run(&ring, &mut disk, 0);
    assert_eq!((done.status, err), (VIRTIO_BLK_S_OK as u8, None));
    assert!(ring.read_bytes(DATA, 512).iter().all(|&b| b == 1));
}

#[test]
fn config_space_reports_capacity_and_limits() {
    let dev = Block::new(Box::new(MemDisk::new(DISK, false)), "x");
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), (DISK / 512) as u64);
    let mut w = [0u8; 4];
    dev.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), SEG_MAX);
    dev.read_config(20, &mut w);
    assert_eq!(u32::from_le_bytes(w), 512);
    dev.read_config(1000, &mut w);
    assert_eq!(w, [0; 4], "past the structure reads zero");
    dev.read_config(u64::MAX, &mut w);
    assert_eq!(w, [0; 4]);
}

#[test]
fn event_idx_publishes_avail_event_and_bogus_avail_index_does_not_spin() {
    use crate::virtio::fuzz::NoInterrupt;
    use std::sync::Arc;
    let mut ring = TestRing::new(16);
    let disk = MemDisk::new(DISK, false);
    header(&ring, VIRTIO_BLK_T_IN, 1);
    three(&ring, 512, WRITE);
    ring.push(0);
    ring.push(0);
    let mut q = ring.queue();
    q.set_event_idx(true);
    let served = serve_for_fuzz(
        ring.mem.clone(),
        q,
        Box::new(disk.clone()),
        Box::new(storage::io::engine::SyncEngine::default()),
        Arc::new(NoInterrupt),
    );
    assert_eq!(served, 2);
    assert_eq!(ring.used_idx(), 2);
    // avail_event sits after the used ring's 16 elements: the device asks to be notified
    // when the driver makes entry 2 available.
    let (_, _, used) = TestRing::addresses();
    let avail_event: u16 =
        u16::from_le_bytes(ring.read_bytes(used + 4 + 16 * 8, 2).try_into().unwrap());
    assert_eq!(avail_event, 2);
    // An avail index far ahead of the ring is refused, and the worker returns.
    let (_, avail, _) = TestRing::addresses();
    ring.write(avail + 2, 1000u16);
    let mut q = ring.queue();
    q.set_event_idx(true);
    let served = serve_for_fuzz(
        ring.mem.clone(),
        q,
        Box::new(disk),
        Box::new(storage::io::engine::SyncEngine::default()),
        Arc::new(NoInterrupt),
    );
    assert_eq!(served, 0);
}

/// Five 16 MiB writes in one batch (more than MAX_INFLIGHT_BYTES, so the batch is split), then
/// five reads, on a real file through the host's best engine (io_uring where available).
#[test]
fn a_batch_of_large_requests_on_a_file() {
    use crate::virtio::fuzz::NoInterrupt;
    use std::sync::Arc;
    const REQ: u64 = 16 << 20;
    const N: u16 = 5;
    let path = std::env::temp_dir().join(format!("thinvm-blk-batch-{}.raw", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(REQ * u64::from(N)).unwrap();
    drop(f);
    assert!(REQ * u64::from(N) > MAX_INFLIGHT_BYTES);
    let mut ring = TestRing::new(256);
    // One 1 MiB guest buffer per request (0x100000 + i * 0x10_0000 would not fit in 4 MiB:
    // the writes share one buffer filled with 0x5a, the reads share another).
    ring.write_bytes(0x10_0000, &vec![0x5a; 1 << 20]);
    let serve = |ring: &mut TestRing, ty: u32, buf: u64, flags: u16| {
        for r in 0..N {
            let base = r * 18;
            let hdr = 0x1_0000 + u64::from(r) * 16;
            ring.write(hdr, ty);
            ring.write(hdr + 8, u64::from(r) * REQ / 512);
            ring.desc(base, hdr, 16, NEXT, base + 1);
            for k in 0..16 {
                ring.desc(base + 1 + k, buf, 1 << 20, flags | NEXT, base + 2 + k);
            }
            ring.desc(base + 17, 0x2_0000 + u64::from(r), 1, WRITE, 0);
            ring.write(0x2_0000 + u64::from(r), 0xffu8);
            ring.push(base);
        }
        let disk = storage::formats::raw::Raw::open(&path, true, false).unwrap();
        let engine = storage::io::engine::best_engine(256);
        let mut q = ring.queue();
        // The ring keeps going: skip what earlier rounds consumed.
        let done = u16::from_le_bytes(
            ring.read_bytes(TestRing::addresses().2 + 2, 2)
                .try_into()
                .unwrap(),
        );
        q.set_next_avail(done);
        q.set_next_used(done);
        serve_for_fuzz(
            ring.mem.clone(),
            q,
            Box::new(disk),
            engine,
            Arc::new(NoInterrupt),
        )
    };
    assert_eq!(
        serve(&mut ring, VIRTIO_BLK_T_OUT, 0x10_0000, 0),
        usize::from(N)
    );
    assert_eq!(ring.read_bytes(0x2_0000, 5), vec![0; 5], "all writes OK");
    let data = std::fs::read(&path).unwrap();
    assert!(data.iter().all(|&b| b == 0x5a), "every byte written");
    assert_eq!(
        serve(&mut ring, VIRTIO_BLK_T_IN, 0x20_0000, WRITE),
        usize::from(N)
    );
    assert_eq!(ring.read_bytes(0x2_0000, 5), vec![0; 5], "all reads OK");
    assert!(ring
        .read_bytes(0x20_0000, 1 << 20)
        .iter()
        .all(|&b| b == 0x5a));
    assert_eq!(ring.used_idx(), 2 * N);
    for i in 0..2 * N {
        let (_, len) = ring.used(i);
        assert!(len == 1 || len == (REQ + 1) as u32, "used len {len}");
    }
    std::fs::remove_file(path).unwrap();
}
