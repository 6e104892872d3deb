//! Mergeable rx buffers: a frame spread over as many chains as it needs, `num_buffers` in the
//! first header, frames waiting for buffers, and a ring too small for a frame.

use super::*;

/// `count` chains of `len` bytes each at 0x10000 + i * 0x1000, heads `first`.., made available.
fn post(s: &mut Setup, first: u16, count: u16, len: u32) {
    for i in first..first + count {
        s.rx.desc(i, 0x10000 + u64::from(i) * 0x1000, len, WRITE, 0);
        s.rx.push(i);
    }
}

fn num_buffers(s: &Setup, head: u16) -> u16 {
    let at = 0x10000 + u64::from(head) * 0x1000 + 10;
    s.rx.mem.read_obj(GuestAddress(at)).unwrap()
}

/// The bytes the used entries `from`.. describe, concatenated in order.
fn delivered(s: &Setup, from: u16, count: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for i in from..from + count {
        let (head, len) = s.rx.used(i);
        let mut part = vec![0; len as usize];
        let at = 0x10000 + u64::from(head) * 0x1000;
        s.rx.mem.read_slice(&mut part, GuestAddress(at)).unwrap();
        out.extend_from_slice(&part);
    }
    out
}

fn mergeable() -> Setup {
    let mut s = setup();
    s.q.mergeable = true;
    s
}

#[test]
fn a_frame_spans_as_many_chains_as_it_needs() {
    let mut s = mergeable();
    let mut frame = pattern(4000, 3);
    s.state.lock().unwrap().incoming.push_back(frame.clone());
    post(&mut s, 0, 8, 1526);
    s.q.process_rx();
    assert_eq!(s.rx.used_idx(), 3, "4000 bytes in chains of 1526");
    assert_eq!(s.rx.used(0), (0, 1526));
    assert_eq!(s.rx.used(1), (1, 1526));
    assert_eq!(s.rx.used(2), (2, 948));
    assert_eq!(num_buffers(&s, 0), 3);
    frame[10..12].copy_from_slice(&3u16.to_le_bytes());
    assert_eq!(delivered(&s, 0, 3), frame);
    assert_eq!(s.q.stats.rx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(s.q.stats.rx_bytes.load(Ordering::Relaxed), 4000 - 12);
    // The other five chains are held for the next frames, in ring order.
    let held: Vec<u16> = s.q.held.iter().map(|c| c.head).collect();
    assert_eq!(held, vec![3, 4, 5, 6, 7]);
    s.state.lock().unwrap().incoming.push_back(pattern(100, 4));
    s.q.process_rx();
    assert_eq!(s.rx.used(3), (3, 100));
    assert_eq!(num_buffers(&s, 3), 1);
}

#[test]
fn enough_buffers_take_the_frame_straight_from_the_backend() {
    let mut s = mergeable();
    // Ten chains of 8 KiB hold the largest frame: one readv into guest memory, over the first
    // nine chains' buffers (8 x 8192 + 27 bytes = MAX_FRAME + 1).
    for i in 0..10u16 {
        s.rx.desc(i, 0x10000 + u64::from(i) * 0x2000, 8192, WRITE, 0);
        s.rx.push(i);
    }
    let mut frame = pattern(9000, 1);
    s.state.lock().unwrap().incoming.push_back(frame.clone());
    s.q.process_rx();
    assert_eq!(s.state.lock().unwrap().rooms, vec![(9, MAX_FRAME + 1)]);
    assert_eq!(s.rx.used_idx(), 2);
    assert_eq!(s.rx.used(1), (1, 9000 - 8192));
    frame[10..12].copy_from_slice(&2u16.to_le_bytes());
    let mut got = vec![0; 9000];
    s.rx.mem
        .read_slice(&mut got, GuestAddress(0x10000))
        .unwrap();
    assert_eq!(got, frame);
    // Fewer chains than that (16 of 4 KiB = 64 KiB): the frame comes through the bounce buffer.
    let mut s = mergeable();
    post(&mut s, 0, 16, 4096);
    s.state.lock().unwrap().incoming.push_back(pattern(9000, 1));
    s.q.process_rx();
    assert_eq!(s.rx.used_idx(), 3);
    assert_eq!(s.state.lock().unwrap().rooms, vec![(1, MAX_FRAME + 1)]);
    assert_eq!(num_buffers(&s, 0), 3);
}

#[test]
fn a_frame_waits_for_more_buffers() {
    let mut s = mergeable();
    let mut frame = pattern(5000, 6);
    s.state.lock().unwrap().incoming.push_back(frame.clone());
    post(&mut s, 0, 2, 1526);
    assert!(s.q.process_rx(), "out of buffers");
    assert_eq!(s.rx.used_idx(), 0, "nothing returned yet");
    assert_eq!(s.q.pending, Some(5000));
    post(&mut s, 2, 2, 1526);
    s.q.process_rx();
    assert_eq!(s.rx.used_idx(), 4);
    assert_eq!(s.rx.used(3), (3, 5000 - 3 * 1526));
    frame[10..12].copy_from_slice(&4u16.to_le_bytes());
    assert_eq!(delivered(&s, 0, 4), frame);
    assert_eq!(s.q.pending, None);
    assert_eq!(s.q.stats.rx_drops.load(Ordering::Relaxed), 0);
}

#[test]
fn a_frame_larger_than_the_whole_ring_is_dropped() {
    let mut s = mergeable();
    // Every entry of the 16-entry ring posted, 64 bytes each: 1 KiB in all.
    post(&mut s, 0, 16, 64);
    s.state.lock().unwrap().incoming.push_back(pattern(2000, 1));
    s.state.lock().unwrap().incoming.push_back(pattern(50, 2));
    s.q.process_rx();
    assert_eq!(
        s.rx.used(0),
        (0, 0),
        "the dropped frame's chain goes back unused"
    );
    assert_eq!(s.rx.used(1), (1, 50), "the next frame is delivered");
    assert_eq!(s.q.stats.rx_drops.load(Ordering::Relaxed), 1);
    assert_eq!(s.q.pending, None);
}

#[test]
fn bad_chains_among_mergeable_buffers_are_refused() {
    let mut s = mergeable();
    post(&mut s, 0, 4, 1526);
    s.rx.desc(4, 0x30000, 8, WRITE, 0); // shorter than a header
    s.rx.desc(5, 0x30000, 1526, 0, 0); // driver-readable
    s.rx.push(4);
    s.rx.push(5);
    post(&mut s, 6, 2, 1526);
    let frame = pattern(7000, 9);
    s.state.lock().unwrap().incoming.push_back(frame.clone());
    s.q.process_rx();
    // 7000 bytes: four chains of 1526 (6104), then the two refused, then one more.
    let used: Vec<(u32, u32)> = (0..7).map(|i| s.rx.used(i)).collect();
    assert_eq!(
        used,
        vec![
            (4, 0),
            (5, 0),
            (0, 1526),
            (1, 1526),
            (2, 1526),
            (3, 1526),
            (6, 896)
        ]
    );
    assert_eq!(num_buffers(&s, 0), 5);
    assert_eq!(s.q.stats.rx_drops.load(Ordering::Relaxed), 2);
}

#[test]
fn the_device_offers_mergeable_buffers() {
    let (backend, _) = fake();
    let net = Net::new(backend, [2, 0, 0, 0, 0, 1]);
    assert_ne!(net.features() & F_MRG_RXBUF, 0);
}
