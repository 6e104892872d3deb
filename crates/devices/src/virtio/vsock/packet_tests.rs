use super::*;
use crate::virtio::testmem::{TestRing, NEXT, WRITE};

fn sample() -> Header {
    Header {
        src_cid: 3,
        dst_cid: 2,
        src_port: 0x1122_3344,
        dst_port: 5000,
        len: 7,
        type_: TYPE_STREAM,
        op: op::RW,
        flags: 3,
        buf_alloc: 262_144,
        fwd_cnt: 99,
    }
}

#[test]
fn header_layout_is_the_specs() {
    let b = sample().to_bytes();
    assert_eq!(&b[0..8], &3u64.to_le_bytes());
    assert_eq!(&b[8..16], &2u64.to_le_bytes());
    assert_eq!(&b[16..20], &[0x44, 0x33, 0x22, 0x11]);
    assert_eq!(&b[20..24], &5000u32.to_le_bytes());
    assert_eq!(&b[24..28], &7u32.to_le_bytes());
    assert_eq!(&b[28..30], &[1, 0]);
    assert_eq!(&b[30..32], &[5, 0]);
    assert_eq!(&b[32..36], &3u32.to_le_bytes());
    assert_eq!(&b[36..40], &262_144u32.to_le_bytes());
    assert_eq!(&b[40..44], &99u32.to_le_bytes());
    assert_eq!(Header::parse(&b), sample());
}

#[test]
fn reset_reply_swaps_the_ends() {
    let r = sample().reset_reply();
    assert_eq!((r.src_cid, r.dst_cid), (HOST_CID, 3));
    assert_eq!((r.src_port, r.dst_port), (5000, 0x1122_3344));
    assert_eq!((r.op, r.len, r.type_), (op::RST, 0, TYPE_STREAM));
}

#[test]
fn tx_read_and_rx_write_across_small_descriptors() {
    let ring = TestRing::new(8);
    let mut raw = sample().to_bytes().to_vec();
    raw.extend_from_slice(b"payload");
    // Three pieces: 30, 20, rest.
    ring.write_bytes(0x10000, &raw[..30]);
    ring.write_bytes(0x11000, &raw[30..50]);
    ring.write_bytes(0x12000, &raw[50..]);
    ring.desc(0, 0x10000, 30, NEXT, 1);
    ring.desc(1, 0x11000, 20, NEXT, 2);
    ring.desc(2, 0x12000, 100, 0, 0);
    let mut q = ring.queue();
    let mut r = TestRing::at(&ring.mem, 0x1000, 8);
    r.push(0);
    let chain = virtio_queue::QueueT::pop_descriptor_chain(&mut q, &ring.mem).unwrap();
    let mut payload = Vec::new();
    let h = read_tx(&ring.mem, chain, 3, &mut payload).unwrap();
    assert_eq!(h, sample());
    assert_eq!(payload, b"payload");

    ring.desc(3, 0x20000, 40, WRITE | NEXT, 4);
    ring.desc(4, 0x21000, 20, WRITE, 0);
    r.push(3);
    let chain = virtio_queue::QueueT::pop_descriptor_chain(&mut q, &ring.mem).unwrap();
    let descs = checked_chain(&ring.mem, chain, true).unwrap();
    assert_eq!(chain_len(&descs), 60);
    assert_eq!(write_rx(&ring.mem, &descs, &sample(), b"payload"), Ok(51));
    let mut back = ring.read_bytes(0x20000, 40);
    back.extend(ring.read_bytes(0x21000, 11));
    assert_eq!(back, raw);
    let too_big = vec![0u8; 17];
    assert!(write_rx(&ring.mem, &descs, &sample(), &too_big).is_err());
}
