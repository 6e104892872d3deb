//! Hostile chains and headers: each is refused and counted, nothing panics, and the device
//! keeps serving good packets afterwards.

use std::sync::atomic::Ordering;

use super::harness::*;
use super::packet::{op, HDR_LEN, MAX_PAYLOAD};
use crate::virtio::testmem::{MEM_SIZE, NEXT, WRITE};

fn refused(g: &Guest) -> u64 {
    g.stats.refused.load(Ordering::Relaxed)
}

/// After the hostile input: nothing reached the guest but the refusals, and a good
/// connection attempt still gets its answer.
fn still_serves(g: &mut Guest, want_refused: u64) {
    assert_eq!(refused(g), want_refused);
    let stray: Vec<u16> = g.recv().iter().map(|(h, _)| h.op).collect();
    assert!(
        stray.iter().all(|&o| o == 0),
        "no packet answered bad input: {stray:?}"
    );
    g.send(hdr(op::REQUEST, 77, 4242, 0), &[]);
    let got = g.recv_n(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::RST);
}

#[test]
fn bad_tx_chains_are_refused() {
    let mut g = Guest::new();
    g.post_rx(16, RX_LEN);
    let mut n = 0;
    let mut bad = |g: &mut Guest, write: &dyn Fn(&Guest, u16, u64)| {
        let (i, at) = g.tx_slot();
        write(g, i, at);
        g.push_tx(i);
        n += 1;
        assert_eq!(refused(g), n);
        assert_eq!(g.tx.used_idx(), n as u16, "the chain is returned");
    };
    // Shorter than a header.
    bad(&mut g, &|g, i, at| {
        g.tx.write_bytes(at, &hdr(op::REQUEST, 1, 2, 0).to_bytes());
        g.tx.desc(i, at, 20, 0, 0);
    });
    // Length beyond the buffers.
    bad(&mut g, &|g, i, at| {
        g.tx.write_bytes(at, &hdr(op::RW, 1, 2, 100).to_bytes());
        g.tx.desc(i, at, HDR_LEN as u32, NEXT, i + 1);
        g.tx.desc(i + 1, at + 64, 10, 0, 0);
    });
    // Length above the limit.
    bad(&mut g, &|g, i, at| {
        g.tx.write_bytes(at, &hdr(op::RW, 1, 2, MAX_PAYLOAD + 1).to_bytes());
        g.tx.desc(i, at, HDR_LEN as u32, 0, 0);
    });
    // Wrong source and destination CIDs.
    bad(&mut g, &|g, i, at| {
        let mut h = hdr(op::REQUEST, 1, 2, 0);
        h.src_cid = 4;
        g.tx.write_bytes(at, &h.to_bytes());
        g.tx.desc(i, at, HDR_LEN as u32, 0, 0);
    });
    bad(&mut g, &|g, i, at| {
        let mut h = hdr(op::REQUEST, 1, 2, 0);
        h.dst_cid = 1;
        g.tx.write_bytes(at, &h.to_bytes());
        g.tx.desc(i, at, HDR_LEN as u32, 0, 0);
    });
    // Buffers outside guest memory.
    bad(&mut g, &|g, i, _| {
        g.tx.desc(i, MEM_SIZE - 10, HDR_LEN as u32, 0, 0)
    });
    bad(&mut g, &|g, i, _| {
        g.tx.desc(i, u64::MAX - 8, HDR_LEN as u32, 0, 0)
    });
    bad(&mut g, &|g, i, at| {
        g.tx.write_bytes(at, &hdr(op::RW, 1, 2, 8).to_bytes());
        g.tx.desc(i, at, HDR_LEN as u32, NEXT, i + 1);
        g.tx.desc(i + 1, MEM_SIZE + 0x1000, 8, 0, 0);
    });
    // A loop, a dangling link, a device-writable buffer.
    bad(&mut g, &|g, i, at| {
        g.tx.desc(i, at, HDR_LEN as u32, NEXT, i)
    });
    bad(&mut g, &|g, i, at| {
        g.tx.desc(i, at, HDR_LEN as u32, NEXT, 500)
    });
    bad(&mut g, &|g, i, at| {
        g.tx.desc(i, at, HDR_LEN as u32, WRITE, 0)
    });
    still_serves(&mut g, n);
}

#[test]
fn a_header_split_across_descriptors_is_read() {
    let mut g = Guest::new();
    g.post_rx(4, RX_LEN);
    let (i, at) = g.tx_slot();
    let h = hdr(op::REQUEST, 5, 6, 0).to_bytes();
    g.tx.write_bytes(at, &h[..10]);
    g.tx.write_bytes(at + 0x100, &h[10..]);
    g.tx.desc(i, at, 10, NEXT, i + 1);
    g.tx.desc(i + 1, at + 0x100, (HDR_LEN - 10) as u32, 0, 0);
    g.push_tx(i);
    let got = g.recv_n(1);
    assert_eq!((got[0].0.op, got[0].0.dst_port), (op::RST, 5));
    assert_eq!(refused(&g), 0);
}

#[test]
fn bad_rx_chains_are_returned_empty() {
    let mut g = Guest::new();
    // Stray packet first, so a reset waits for a buffer.
    g.send(hdr(op::RW, 1, 2, 1), b"x");
    let slots = [
        (RX_BUF, RX_LEN, 0u16),          // device-readable
        (RX_BUF, 20, WRITE),             // shorter than a header
        (MEM_SIZE - 16, RX_LEN, WRITE),  // outside memory
        (u64::MAX - 100, RX_LEN, WRITE), // wraps
    ];
    for (k, (addr, len, flags)) in slots.into_iter().enumerate() {
        g.rx.desc(k as u16, addr, len, flags, 0);
        g.rx.push(k as u16);
    }
    g.rx.desc(4, RX_BUF + 0x10000, 30, WRITE | NEXT, 4); // loop
    g.rx.push(4);
    g.post_rx(0, 0);
    let got = g.recv();
    assert_eq!(got.len(), 5);
    assert!(
        got.iter().all(|(h, p)| h.op == 0 && p.is_empty()),
        "returned with length 0"
    );
    assert_eq!(refused(&g), 5);
    // The reset still waits, and goes into the next good buffer.
    g.rx.desc(5, RX_BUF + 5 * u64::from(RX_LEN), RX_LEN, WRITE, 0);
    g.rx.push(5);
    g.post_rx(0, 0);
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::RST);
}

#[test]
fn seeded_random_rings_never_panic() {
    // xorshift64*: reproducible garbage in the tx descriptor table, ring and buffers.
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut g = Guest::new();
    g.post_rx(RING, RX_LEN);
    for round in 0..200 {
        for i in 0..RING {
            let addr = match next() % 4 {
                0 => next(),
                1 => TX_BUF + next() % 0x10000,
                _ => TX_BUF + u64::from(i) * 64,
            };
            let len = (next() % 0x200) as u32;
            g.tx.desc(i, addr, len, (next() % 8) as u16, (next() % 80) as u16);
            let mut h = hdr(op::RW, 1, 2, 0);
            h.op = (next() % 9) as u16;
            h.len = (next() % 300) as u32;
            h.type_ = (next() % 3) as u16;
            h.src_port = (next() % 4) as u32;
            h.dst_port = (next() % 4) as u32;
            g.tx.write_bytes(TX_BUF + u64::from(i) * 64, &h.to_bytes()[..]);
        }
        for _ in 0..(next() % 8) {
            g.push_tx((next() % u64::from(RING)) as u16);
        }
        let _ = g.recv();
        if round % 16 == 0 {
            g.post_rx(RING / 2, RX_LEN);
        }
    }
}
