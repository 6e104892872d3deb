//! A quick mutation run of the fuzz entry points: valid requests, then damaged copies of them.

use super::*;

/// xorshift64*: a deterministic stream for reproducible mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn put(m: &mut [u8], at: usize, b: &[u8]) {
    m[at..at + b.len()].copy_from_slice(b);
}

fn desc(m: &mut [u8], i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    let at = DESC as usize + i * 16;
    put(m, at, &addr.to_le_bytes());
    put(m, at + 8, &len.to_le_bytes());
    put(m, at + 12, &flags.to_le_bytes());
    put(m, at + 14, &next.to_le_bytes());
}

/// Memory with two valid blk requests (a read and a write) available.
fn blk_seed() -> Vec<u8> {
    let mut m = vec![0u8; 0x8000];
    put(
        &mut m,
        0x1000,
        &[0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
    ); // IN sector 2
    put(
        &mut m,
        0x1100,
        &[1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0],
    ); // OUT sector 3
    desc(&mut m, 0, 0x1000, 16, 1, 1);
    desc(&mut m, 1, 0x2000, 512, 3, 2);
    desc(&mut m, 2, 0x3000, 1, 2, 0);
    desc(&mut m, 3, 0x1100, 16, 1, 4);
    desc(&mut m, 4, 0x4000, 1024, 1, 5);
    desc(&mut m, 5, 0x3001, 1, 2, 0);
    put(&mut m, AVAIL as usize + 2, &2u16.to_le_bytes());
    put(&mut m, AVAIL as usize + 4, &0u16.to_le_bytes());
    put(&mut m, AVAIL as usize + 6, &3u16.to_le_bytes());
    m
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        // Mostly in the rings and headers, sometimes anywhere.
        let span = if rng.below(4) == 0 { d.len() } else { 0x1200 };
        let at = rng.below(span as u64) as usize;
        d[at] = match rng.below(4) {
            0 => d[at] ^ (1 << rng.below(8)),
            1 => 0xff,
            2 => 0,
            _ => rng.next() as u8,
        };
    }
    d
}

#[test]
fn seeds_are_served() {
    assert_eq!(blk_queue(&blk_seed()), 2);
    let mut m = vec![0u8; 0x2000];
    desc(&mut m, 0, 0x1000, 64, 2, 0);
    put(&mut m, AVAIL as usize + 2, &1u16.to_le_bytes());
    assert_eq!(rng_queue(&m), 1);
    assert_eq!(blk_queue(&[]), 0, "nothing available");
}

#[test]
fn blk_and_rng_mutations_never_panic() {
    let seed = blk_seed();
    let mut rng = Rng(0x7468_696e_766d);
    for _ in 0..3000 {
        let d = mutate(&seed, &mut rng);
        assert!(blk_queue(&d) <= usize::from(QUEUE));
        assert!(rng_queue(&d) <= usize::from(QUEUE));
    }
}

/// Memory with a REQUEST, an rx buffer, an RW of 16 bytes, an rx buffer available.
fn vsock_seed() -> Vec<u8> {
    let mut m = vec![0u8; 0x8000];
    let hdr = |op: u16, len: u32| {
        let mut h = vec![0u8; 44];
        h[0..8].copy_from_slice(&3u64.to_le_bytes());
        h[8..16].copy_from_slice(&2u64.to_le_bytes());
        h[16..20].copy_from_slice(&1234u32.to_le_bytes());
        h[20..24].copy_from_slice(&5000u32.to_le_bytes());
        h[24..28].copy_from_slice(&len.to_le_bytes());
        h[28..30].copy_from_slice(&1u16.to_le_bytes());
        h[30..32].copy_from_slice(&op.to_le_bytes());
        h[36..40].copy_from_slice(&65536u32.to_le_bytes());
        h
    };
    put(&mut m, 0x1000, &hdr(1, 0));
    put(&mut m, 0x1100, &hdr(5, 16));
    put(&mut m, 0x1200, b"sixteen bytes!!!");
    desc(&mut m, 0, 0x1000, 44, 0, 0); // REQUEST
    desc(&mut m, 1, 0x2000, 0x400, 2, 0); // rx buffer
    desc(&mut m, 2, 0x1100, 44, 1, 4); // RW header ...
    desc(&mut m, 4, 0x1200, 16, 0, 0); // ... and payload
    desc(&mut m, 3, 0x3000, 0x400, 2, 0); // rx buffer
    for (i, head) in [0u16, 1, 2, 3].iter().enumerate() {
        put(&mut m, AVAIL as usize + 4 + 2 * i, &head.to_le_bytes());
    }
    put(&mut m, AVAIL as usize + 2, &4u16.to_le_bytes());
    m
}

#[test]
fn vsock_seed_is_served_and_answered() {
    let m = vsock_seed();
    let mem = memory(&m);
    assert_eq!(vsock_serve(&mem, &m), 4);
    let used = |i: u64| -> (u32, u32) {
        let at = GuestAddress(USED + 4 + 8 * i);
        (
            mem.read_obj(at).unwrap(),
            mem.read_obj(GuestAddress(at.0 + 4)).unwrap(),
        )
    };
    let op_at = |a: u64| -> u16 { mem.read_obj(GuestAddress(a + 30)).unwrap() };
    // The first rx buffer got the RESPONSE, the second the host's 8 + 16 bytes.
    assert_eq!(used(1), (1, 44));
    assert_eq!(op_at(0x2000), 2);
    assert_eq!(used(3), (3, 44 + 24));
    assert_eq!(op_at(0x3000), 5);
}

#[test]
fn vsock_mutations_never_panic() {
    let seed = vsock_seed();
    let mut rng = Rng(0x0076_736f_636b);
    for _ in 0..3000 {
        let d = mutate(&seed, &mut rng);
        assert!(vsock_queue(&d) <= usize::from(QUEUE));
    }
}

/// Memory with an inflate-style chain of page numbers and a chain of two free ranges.
fn balloon_seed() -> Vec<u8> {
    let mut m = vec![0u8; 0x8000];
    for (i, pfn) in [0x10u32, 0x11, 0x13, 0x3ff, 0xffff_ffff].iter().enumerate() {
        put(&mut m, 0x1000 + i * 4, &pfn.to_le_bytes());
    }
    put(&mut m, 0x1100, &4u16.to_le_bytes());
    put(&mut m, 0x1102, &4096u64.to_le_bytes());
    desc(&mut m, 0, 0x1000, 20, 0, 0);
    desc(&mut m, 1, 0x20000, 0x8000, 3, 2);
    desc(&mut m, 2, 0x3_f000, 0x2000, 2, 0);
    desc(&mut m, 3, 0x1100, 10, 0, 0);
    put(&mut m, AVAIL as usize + 2, &3u16.to_le_bytes());
    put(&mut m, AVAIL as usize + 4, &0u16.to_le_bytes());
    put(&mut m, AVAIL as usize + 6, &1u16.to_le_bytes());
    put(&mut m, AVAIL as usize + 8, &3u16.to_le_bytes());
    m
}

#[test]
fn balloon_seed_is_served_in_every_role() {
    assert_eq!(balloon_queue(&balloon_seed()), 12);
    assert_eq!(balloon_queue(&[]), 0);
}

#[test]
fn balloon_mutations_never_panic() {
    let seed = balloon_seed();
    let mut rng = Rng(0x0062_616c_6c6f_6f6e);
    for _ in 0..2000 {
        let d = mutate(&seed, &mut rng);
        assert!(balloon_queue(&d) <= 4 * usize::from(QUEUE));
    }
}

/// Memory with a tx frame in two buffers, then rx chains: a small buffer, the Linux "big
/// packets" shape (header, then 72 KiB) and a chain too short for a header.
fn net_seed() -> Vec<u8> {
    let mut m = vec![0u8; 0x3_0000];
    // Frames waiting for rx: 14 + 4 bytes (0x04 % 4 = 0), then the largest (0x02).
    m[NET_SPEC] = 0x04;
    m[NET_SPEC + 1] = 0x02;
    desc(&mut m, 0, 0x1000, 12, 1, 1); // tx: header ...
    desc(&mut m, 1, 0x1100, 60, 0, 0); // ... and a 60-byte frame (both driver-readable)
    desc(&mut m, 2, 0x2000, 1526, 2, 0); // rx: one small buffer
    desc(&mut m, 3, 0x3000, 12, 3, 4); // rx: header ...
    desc(&mut m, 4, 0x1_0000, 0x1_2000, 2, 0); // ... and 72 KiB
    desc(&mut m, 5, 0x2800, 8, 2, 0); // rx: shorter than a header
    for (i, head) in [0u16, 2, 3, 5].iter().enumerate() {
        put(&mut m, AVAIL as usize + 4 + 2 * i, &head.to_le_bytes());
    }
    put(&mut m, AVAIL as usize + 2, &4u16.to_le_bytes());
    m
}

#[test]
fn net_seed_is_served_as_tx_and_rx() {
    // tx: 4 chains (one frame sent, three refused: wrong direction); rx: the small buffer
    // and the 72 KiB chain get a frame each, the tx chain and the short one are refused.
    assert_eq!(net_serve(&net_seed()), (8, 2), "both frames delivered");
    assert_eq!(net_queue(&[]), 0);
    // With mergeable buffers: the small buffer and the big chain are held together (room for
    // the largest frame), then each frame takes the chains it needs in ring order.
    let mut m = net_seed();
    m[NET_SPEC + 8] = 1;
    assert_eq!(net_serve(&m), (8, 2));
}

#[test]
fn net_mutations_never_panic() {
    let seed = net_seed();
    let mut rng = Rng(0x006e_6574);
    for _ in 0..2000 {
        let d = mutate(&seed, &mut rng);
        assert!(net_queue(&d) <= 2 * usize::from(QUEUE));
    }
}
