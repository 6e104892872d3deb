//! The tx and rx queues processed in place: frames written from and read into the chains'
//! guest memory, waiting for buffers, and hostile or random rings that must be dropped and
//! counted, never panic.

use super::*;

#[test]
fn tx_gathers_a_chain_into_one_frame() {
    let mut s = setup();
    let frame = pattern(12 + 100, 3);
    s.tx.mem
        .write_slice(&frame[..12], GuestAddress(0x10000))
        .unwrap();
    s.tx.mem
        .write_slice(&frame[12..50], GuestAddress(0x20000))
        .unwrap();
    s.tx.mem
        .write_slice(&frame[50..], GuestAddress(0x30000))
        .unwrap();
    s.tx.desc(0, 0x10000, 12, NEXT, 1);
    s.tx.desc(1, 0x20000, 38, NEXT, 2);
    s.tx.desc(2, 0x30000, 62, 0, 0);
    s.tx.push(0);
    s.q.process_tx();
    assert_eq!(s.state.lock().unwrap().sent, vec![frame]);
    assert_eq!(s.tx.used_idx(), 1);
    assert_eq!(s.tx.used(0), (0, 0));
    assert_eq!(s.q.stats.tx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(s.q.stats.tx_bytes.load(Ordering::Relaxed), 100);
    assert_eq!(s.irq.1.load(Ordering::SeqCst), 1);
}

#[test]
fn hostile_tx_chains_are_dropped_and_returned() {
    let mut s = setup();
    s.tx.desc(0, 0x10000, 64, WRITE, 0); // device-writable on tx
    s.tx.desc(1, MEM_SIZE - 8, 64, 0, 0); // outside memory
    s.tx.desc(2, 0x10000, 64, NEXT, 2); // loop
    s.tx.desc(3, 0x10000, 40000, NEXT, 4); // 80000 bytes: too big
    s.tx.desc(4, 0x20000, 40000, 0, 0);
    s.tx.desc(5, 0x10000, 11, 0, 0); // shorter than the header
    s.tx.desc(6, 0x10000, 64, NEXT, 200); // link out of the table
    for h in [0, 1, 2, 3, 5, 6] {
        s.tx.push(h);
    }
    s.q.process_tx();
    assert!(s.state.lock().unwrap().sent.is_empty());
    assert_eq!(s.tx.used_idx(), 6);
    assert_eq!(s.q.stats.tx_drops.load(Ordering::Relaxed), 6);
    assert_eq!(s.q.stats.tx_frames.load(Ordering::Relaxed), 0);
}

#[test]
fn rx_scatters_a_frame_and_sets_num_buffers() {
    let mut s = setup();
    let mut frame = pattern(12 + 1000, 9);
    s.state.lock().unwrap().incoming.push_back(frame.clone());
    s.rx.mem
        .write_slice(&[0xee; 16], GuestAddress(0x10000))
        .unwrap();
    s.rx.desc(0, 0x10000, 600, WRITE | NEXT, 1);
    s.rx.desc(1, 0x20000, 1500, WRITE, 0);
    s.rx.push(0);
    assert!(s.q.process_rx(), "the one chain is used up");
    frame[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut got = vec![0; 1012];
    s.rx.mem
        .read_slice(&mut got[..600], GuestAddress(0x10000))
        .unwrap();
    s.rx.mem
        .read_slice(&mut got[600..], GuestAddress(0x20000))
        .unwrap();
    assert_eq!(got, frame);
    assert_eq!(s.rx.used(0), (0, 1012));
    assert_eq!(s.q.stats.rx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(s.q.stats.rx_bytes.load(Ordering::Relaxed), 1000);
    assert_eq!(s.irq.0.load(Ordering::SeqCst), 1);
}

#[test]
fn rx_waits_for_buffers_then_delivers() {
    let mut s = setup();
    let frame = pattern(60, 1);
    s.state.lock().unwrap().incoming.push_back(frame.clone());
    assert!(s.q.process_rx(), "the frame waits for buffers");
    assert_eq!(s.rx.used_idx(), 0);
    assert_eq!(
        s.state.lock().unwrap().incoming.len(),
        1,
        "still in the backend"
    );
    s.rx.desc(0, 0x10000, 2048, WRITE, 0);
    s.rx.desc(1, 0x20000, 2048, WRITE, 0);
    s.rx.push(0);
    s.rx.push(1);
    assert!(!s.q.process_rx(), "a chain is left for the next frame");
    assert_eq!(s.rx.used_idx(), 1);
    assert_eq!(s.rx.used(0), (0, 60));
    // The chain taken while the backend was empty went back: the next frame lands in it.
    s.state.lock().unwrap().incoming.push_back(pattern(70, 2));
    s.q.process_rx();
    assert_eq!(s.rx.used(1), (1, 70));
    let mut got = vec![0; 60];
    s.rx.mem
        .read_slice(&mut got, GuestAddress(0x10000))
        .unwrap();
    assert_eq!(got[12..], frame[12..]);
}

#[test]
fn rx_drops_what_does_not_fit_and_bad_chains() {
    let mut s = setup();
    let big = pattern(2000, 2);
    let small = pattern(100, 4);
    for f in [&big, &small] {
        s.state.lock().unwrap().incoming.push_back(f.clone());
    }
    s.rx.desc(0, 0x10000, 1500, WRITE, 0); // too small for `big`: it is dropped
    s.rx.desc(1, 0x20000, 1500, 0, 0); // driver-readable: refused, no frame taken
    s.rx.desc(2, 0x30000, 8, WRITE, 0); // shorter than the header: refused
    s.rx.desc(3, MEM_SIZE - 100, 1500, WRITE, 0); // past the end of memory: refused
    s.rx.desc(4, 0x40000, 1500, WRITE, 0);
    for h in [0, 1, 2, 3, 4] {
        s.rx.push(h);
    }
    s.q.process_rx();
    assert_eq!(s.rx.used(0), (0, 0));
    assert_eq!(s.rx.used(1), (1, 0));
    assert_eq!(s.rx.used(2), (2, 0));
    assert_eq!(s.rx.used(3), (3, 0));
    assert_eq!(
        s.rx.used(4),
        (4, 100),
        "the next frame gets the next good chain"
    );
    assert_eq!(s.q.stats.rx_drops.load(Ordering::Relaxed), 4);
    assert_eq!(s.q.stats.rx_frames.load(Ordering::Relaxed), 1);
    assert!(s.state.lock().unwrap().incoming.is_empty());
    assert_eq!(s.rx.mem.read_obj::<u8>(GuestAddress(0x20000)).unwrap(), 0);
    assert_eq!(s.rx.mem.read_obj::<u8>(GuestAddress(0x30000)).unwrap(), 0);
}

/// A chain that holds the largest frame gets it straight from the backend; a smaller one
/// through the bounce buffer (one byte more than the largest frame, so nothing is cut).
#[test]
fn rx_reads_into_large_chains_directly() {
    let mut s = setup();
    for (i, len) in [9000usize, 1400, MAX_FRAME].into_iter().enumerate() {
        s.state
            .lock()
            .unwrap()
            .incoming
            .push_back(pattern(len, i as u8));
    }
    s.rx.desc(0, 0x10000, 12, WRITE | NEXT, 1); // the Linux "big packets" shape
    s.rx.desc(1, 0x20000, 0x12000, WRITE, 0);
    s.rx.desc(2, 0x40000, 1526, WRITE, 0); // a small buffer
    s.rx.desc(3, 0x50000, MAX_FRAME as u32, WRITE, 0); // exactly the largest frame
    for h in [0, 2, 3] {
        s.rx.push(h);
    }
    s.q.process_rx();
    assert_eq!(s.rx.used(0), (0, 9000));
    assert_eq!(s.rx.used(1), (2, 1400));
    assert_eq!(s.rx.used(2), (3, MAX_FRAME as u32));
    let rooms = s.state.lock().unwrap().rooms.clone();
    let (direct, bounce) = ((2, MAX_FRAME + 1), (1, MAX_FRAME + 1));
    assert_eq!(rooms, vec![direct, bounce, bounce]);
    let mut got = vec![0; 9000 - 12];
    s.rx.mem
        .read_slice(&mut got, GuestAddress(0x20000))
        .unwrap();
    assert_eq!(got, pattern(9000, 0)[12..]);
    let mut got = vec![0; MAX_FRAME - 12];
    s.rx.mem
        .read_slice(&mut got, GuestAddress(0x50000 + 12))
        .unwrap();
    assert_eq!(got, pattern(MAX_FRAME, 2)[12..]);
}

/// A frame longer than the largest one is dropped whole, never handed over cut.
#[test]
fn rx_drops_an_oversized_frame() {
    let mut s = setup();
    s.state
        .lock()
        .unwrap()
        .incoming
        .push_back(pattern(MAX_FRAME + 100, 1));
    s.rx.desc(0, 0x20000, 0x12000, WRITE, 0);
    s.rx.push(0);
    s.q.process_rx();
    assert_eq!(s.rx.used(0), (0, 0));
    assert_eq!(s.q.stats.rx_drops.load(Ordering::Relaxed), 1);
}

/// A chain whose header is split over tiny buffers still gets `num_buffers` = 1 in the right
/// two bytes; a chain far larger than a frame is used only up to the frame.
#[test]
fn rx_header_split_over_buffers() {
    let mut s = setup();
    let mut frame = pattern(12 + 300, 6);
    s.state.lock().unwrap().incoming.push_back(frame.clone());
    s.rx.mem
        .write_slice(&[0xee; 8], GuestAddress(0x10000))
        .unwrap();
    s.rx.desc(0, 0x10000, 9, WRITE | NEXT, 1);
    s.rx.desc(1, 0x10100, 2, WRITE | NEXT, 2);
    s.rx.desc(2, 0x10200, 1, WRITE | NEXT, 3);
    s.rx.desc(3, 0x20000, 0x20000, WRITE, 0);
    s.rx.push(0);
    s.q.process_rx();
    assert_eq!(s.rx.used(0), (0, 312));
    frame[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut got = vec![0; 312];
    let m = &s.rx.mem;
    m.read_slice(&mut got[..9], GuestAddress(0x10000)).unwrap();
    m.read_slice(&mut got[9..11], GuestAddress(0x10100))
        .unwrap();
    m.read_slice(&mut got[11..12], GuestAddress(0x10200))
        .unwrap();
    m.read_slice(&mut got[12..], GuestAddress(0x20000)).unwrap();
    assert_eq!(got, frame);
}

/// Random rings (seeded): descriptors anywhere (also past the end of memory), any length, flags
/// and link, any avail index. Nothing panics and every returned chain is counted once.
#[test]
fn random_rings_never_panic_and_every_chain_is_counted() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200 {
        let mut s = setup();
        for ring in [&s.rx, &s.tx] {
            for i in 0..SIZE {
                let r = next();
                let addr = match r % 4 {
                    0 => MEM_SIZE - (r >> 8) % 64,
                    1 => r >> 4,
                    _ => 0x10000 + (r >> 8) % 0x30_0000,
                };
                let len = match (r >> 40) % 3 {
                    0 => (r >> 16) as u32,
                    _ => ((r >> 16) % 70000) as u32,
                };
                let flags = ((r >> 50) % 4) as u16; // NEXT and WRITE
                ring.desc(i, addr, len, flags, ((r >> 56) % 20) as u16);
            }
        }
        for _ in 0..(next() % 24) {
            // Heads in the table (a head past it cannot be returned: see the test below); links
            // may point anywhere.
            s.rx.push((next() % u64::from(SIZE)) as u16);
            s.tx.push((next() % u64::from(SIZE)) as u16);
        }
        for _ in 0..(next() % 4) {
            let len = (next() % 70000) as usize;
            s.state.lock().unwrap().incoming.push_back(pattern(len, 1));
        }
        s.q.process_tx();
        s.q.process_rx();
        let st = &s.q.stats;
        let tx = st.tx_frames.load(Ordering::Relaxed) + st.tx_drops.load(Ordering::Relaxed);
        assert_eq!(tx, u64::from(s.tx.used_idx()));
        let rx = st.rx_frames.load(Ordering::Relaxed) + st.rx_drops.load(Ordering::Relaxed);
        assert_eq!(rx, u64::from(s.rx.used_idx()));
        assert_eq!(
            s.state.lock().unwrap().sent.len() as u64,
            st.tx_frames.load(Ordering::Relaxed)
        );
    }
}

#[test]
fn heads_past_the_table_are_dropped_without_panic() {
    let mut s = setup();
    s.tx.push(SIZE + 3);
    s.rx.push(SIZE + 1);
    s.rx.desc(0, 0x10000, 2048, WRITE, 0);
    s.rx.push(0);
    s.state.lock().unwrap().incoming.push_back(pattern(40, 1));
    s.state.lock().unwrap().incoming.push_back(pattern(50, 2));
    s.q.process_tx();
    s.q.process_rx();
    assert_eq!(s.q.stats.tx_drops.load(Ordering::Relaxed), 1);
    assert_eq!(
        s.tx.used_idx(),
        0,
        "an index past the table cannot be returned"
    );
    assert_eq!(s.q.stats.rx_drops.load(Ordering::Relaxed), 1);
    assert_eq!(s.q.stats.rx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(s.rx.used(0), (0, 40), "the bad head took no frame");
}
