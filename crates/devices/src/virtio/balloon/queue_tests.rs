//! The balloon's queues served directly (no thread) on memfd-backed guest memory: pages really
//! go back to the host, and hostile chains are refused or skipped without panics.

use std::sync::{Arc, Mutex};

use super::control::BalloonShared;
use super::*;
use crate::virtio::testmem::*;
use crate::virtio::InterruptKind;

#[derive(Default)]
pub(super) struct Irq(pub Mutex<Vec<InterruptKind>>);

impl VirtioInterrupt for Irq {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        self.0.lock().unwrap().push(kind);
        Ok(())
    }
}

struct Setup {
    ring: TestRing,
    q: BalloonQueues,
    shared: Arc<BalloonShared>,
    irq: Arc<Irq>,
}

/// The test ring serves `role`, as transport queue 2.
fn setup(role: Role) -> Setup {
    let ring = TestRing::new_memfd(16);
    // Touch the used ring now, so that st_blocks only changes by what the device releases.
    ring.write(TestRing::addresses().2, 0u64);
    let shared = Arc::new(BalloonShared::new(MEM_SIZE).unwrap());
    let irq = Arc::new(Irq::default());
    let mut slots: [Option<(u16, Queue)>; 4] = Default::default();
    slots[role as usize] = Some((2, ring.queue()));
    let q = BalloonQueues::new(ring.mem.clone(), irq.clone(), shared.clone(), slots);
    Setup {
        ring,
        q,
        shared,
        irq,
    }
}

fn counters(s: &Setup) -> BalloonCounters {
    BalloonHandle(s.shared.clone()).counters()
}

/// Writes le32 `pfns` at 0x10000 as descriptor 0 (flags `flags`) and makes it available.
fn pfn_chain(s: &mut Setup, pfns: &[u32], flags: u16) {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    s.ring.write_bytes(0x10000, &bytes);
    s.ring.desc(0, 0x10000, bytes.len() as u32, flags, 0);
    s.ring.push(0);
}

fn is_zero(s: &Setup, addr: u64, len: usize) -> bool {
    s.ring.read_bytes(addr, len).iter().all(|&b| b == 0)
}

#[test]
fn inflate_punches_holes_that_read_back_as_zeros_and_free_blocks() {
    let mut s = setup(Role::Inflate);
    // 128 pages (512 KiB) straddling the boundary of the two regions, and one more elsewhere.
    let first = 0x200 - 64;
    s.ring.write_bytes(0x1c_0000, &vec![0xaa; 0x8_0000]);
    s.ring.write_bytes(0x30_0000, &[0xbb; 0x2000]);
    let mut pfns: Vec<u32> = (first..first + 128).collect();
    pfns.push(0x300);
    pfns.push(0xffff_ffff); // beyond memory: counted, skipped
    pfns.push((MEM_SIZE / 4096) as u32); // the first page past the end
    pfn_chain(&mut s, &pfns, 0);
    let before = s.ring.allocated_blocks();
    assert_eq!(s.q.serve(Role::Inflate), 1);
    // Before reading them: a read fault on a hole of a shared memfd allocates a page again.
    let after = s.ring.allocated_blocks();
    assert!(
        after + 129 * 8 <= before,
        "st_blocks {before} -> {after}: 129 pages should have been freed"
    );
    assert_eq!(s.ring.used_idx(), 1);
    assert_eq!(s.ring.used(0), (0, 0));
    assert!(
        is_zero(&s, 0x1c_0000, 0x8_0000),
        "punched pages read as zeros"
    );
    assert!(is_zero(&s, 0x30_0000, 0x1000));
    assert_eq!(
        s.ring.read_bytes(0x30_1000, 4),
        vec![0xbb; 4],
        "neighbour kept"
    );
    let c = counters(&s);
    assert_eq!(
        (c.inflated_pages, c.bad_pfns, c.refused_chains),
        (129, 2, 0)
    );
    assert_eq!(*s.irq.0.lock().unwrap(), vec![InterruptKind::Queue(2)]);
}

#[test]
fn deflate_only_counts() {
    let mut s = setup(Role::Deflate);
    s.ring.write_bytes(0x10_0000, &[0xcc; 0x1000]);
    pfn_chain(&mut s, &[0x100, 0x101, 0x105, 0x4000_0000], 0);
    assert_eq!(s.q.serve(Role::Deflate), 1);
    assert_eq!(s.ring.read_bytes(0x10_0000, 4), vec![0xcc; 4]);
    let c = counters(&s);
    assert_eq!((c.deflated_pages, c.bad_pfns, c.inflated_pages), (3, 1, 0));
}

#[test]
fn hostile_pfn_chains_are_refused_whole() {
    let mut s = setup(Role::Inflate);
    s.ring.write_bytes(0x10_0000, &[0xdd; 0x1000]);
    // Device-writable where the device only reads.
    pfn_chain(&mut s, &[0x100], WRITE);
    // A buffer straddling the end of memory.
    s.ring.desc(1, MEM_SIZE - 2, 4, 0, 0);
    s.ring.push(1);
    // A huge length, and a zero-length buffer (served: nothing in it).
    s.ring.desc(2, 0x10000, 0x4000_0000, 0, 0);
    s.ring.push(2);
    s.ring.desc(3, 0x10000, 0, 0, 0);
    s.ring.push(3);
    // Not a whole number of page numbers; then a loop.
    s.ring.desc(4, 0x10000, 6, 0, 0);
    s.ring.push(4);
    s.ring.desc(5, 0x10000, 4, NEXT, 5);
    s.ring.push(5);
    assert_eq!(s.q.serve(Role::Inflate), 6);
    assert_eq!(s.ring.used_idx(), 6, "every chain is returned");
    assert_eq!(
        s.ring.read_bytes(0x10_0000, 4),
        vec![0xdd; 4],
        "nothing released"
    );
    let c = counters(&s);
    assert_eq!((c.refused_chains, c.inflated_pages), (5, 0));
}

#[test]
fn free_page_reports_release_each_checked_range() {
    let mut s = setup(Role::Reporting);
    s.ring.write_bytes(0x28_0000, &vec![0xee; 0x8_0000]);
    s.ring.write_bytes(0x10_0800, &[0x11; 0x2000]);
    // Device-writable, as Linux adds them: a 512 KiB block, an unaligned range (only its
    // whole page is released), a range straddling the end of memory, a zero-length one and
    // a huge one (both skipped).
    s.ring.desc(0, 0x28_0000, 0x8_0000, WRITE | NEXT, 1);
    s.ring.desc(1, 0x10_0800, 0x1800, WRITE | NEXT, 2);
    s.ring.desc(2, MEM_SIZE - 0x1000, 0x2000, WRITE | NEXT, 3);
    s.ring.desc(3, 0x20_0000, 0, WRITE | NEXT, 4);
    s.ring.desc(4, 0, 0x8000_0000, WRITE, 0);
    s.ring.push(0);
    // A chain of more than 2^32 bytes in all (the spec forbids it): refused whole.
    s.ring.desc(5, 0x30_0000, u32::MAX, WRITE | NEXT, 6);
    s.ring.desc(6, 0x30_0000, u32::MAX, WRITE, 0);
    s.ring.push(5);
    let before = s.ring.allocated_blocks();
    assert_eq!(s.q.serve(Role::Reporting), 2);
    let after = s.ring.allocated_blocks();
    assert!(
        after + 0x81_000 / 512 <= before,
        "st_blocks {before} -> {after}"
    );
    let c = counters(&s);
    assert_eq!(c.reported_bytes, 0x8_0000 + 0x1000, "{c:?}");
    assert_eq!((c.bad_ranges, c.refused_chains), (3, 1));
    assert_eq!(s.ring.used_idx(), 2);
    assert!(is_zero(&s, 0x28_0000, 0x8_0000));
    assert!(is_zero(&s, 0x10_1000, 0x1000));
    assert_eq!(s.ring.read_bytes(0x10_0800, 0x800), vec![0x11; 0x800]);
    assert_eq!(s.ring.read_bytes(0x10_2000, 0x800), vec![0x11; 0x800]);
}

fn stats_buffer(s: &mut Setup, head: u16, at: u64, entries: &[(u16, u64)]) {
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect();
    s.ring.write_bytes(at, &bytes);
    s.ring.desc(head, at, bytes.len() as u32, 0, 0);
    s.ring.push(head);
}

#[test]
fn stats_are_kept_and_the_buffer_returned_only_on_request() {
    let mut s = setup(Role::Stats);
    stats_buffer(&mut s, 0, 0x20000, &[(4, 123_456), (5, 999), (77, 5)]);
    assert_eq!(s.q.serve(Role::Stats), 1);
    assert_eq!(s.ring.used_idx(), 0, "kept until fresh figures are wanted");
    let c = counters(&s);
    assert_eq!(c.stats_updates, 1);
    assert_eq!(c.guest.values[4], Some(123_456));
    assert_eq!(c.guest.values[5], Some(999));
    assert!(c.guest.updated.is_some());
    assert!(c
        .named()
        .contains(&("guest_free_memory".to_string(), 123_456)));
    assert!(s.q.request_stats());
    assert_eq!(s.ring.used_idx(), 1);
    assert_eq!(*s.irq.0.lock().unwrap(), vec![InterruptKind::Queue(2)]);
    assert!(!s.q.request_stats(), "nothing held any more");
    // The driver refills; a second buffer while one is held sends the older one back.
    stats_buffer(&mut s, 1, 0x20000, &[(4, 1)]);
    stats_buffer(&mut s, 2, 0x21000, &[(4, 2)]);
    assert_eq!(s.q.serve(Role::Stats), 2);
    assert_eq!(s.ring.used_idx(), 2);
    assert_eq!(s.ring.used(1), (1, 0));
    assert_eq!(counters(&s).guest.values[4], Some(2));
}

#[test]
fn hostile_stats_buffers_are_returned_unread() {
    let mut s = setup(Role::Stats);
    s.ring.desc(0, 0x20000, 15, 0, 0); // not whole entries
    s.ring.push(0);
    s.ring.desc(1, 0x20000, 20, WRITE, 0);
    s.ring.push(1);
    s.ring.desc(2, 0x20000, 0x10_0000, 0, 0); // too long
    s.ring.push(2);
    assert_eq!(s.q.serve(Role::Stats), 3);
    assert_eq!(s.ring.used_idx(), 3);
    let c = counters(&s);
    assert_eq!((c.refused_chains, c.stats_updates), (3, 0));
    assert!(!s.q.request_stats());
}
