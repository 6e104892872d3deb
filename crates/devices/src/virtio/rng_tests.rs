use super::*;
use crate::virtio::testmem::*;

fn chain(ring: &TestRing) -> Option<u32> {
    let mut q = ring.queue();
    let mut r = TestRing::new(ring.size);
    r.mem = ring.mem.clone();
    r.push(0);
    let c = q.pop_descriptor_chain(&ring.mem).unwrap();
    serve_chain(&ring.mem, c)
}

#[test]
fn fills_writable_buffers_with_random_bytes() {
    let ring = TestRing::new(8);
    ring.desc(0, 0x10000, 64, WRITE | NEXT, 1);
    ring.desc(1, 0x20000, 64, WRITE, 0);
    assert_eq!(chain(&ring), Some(128));
    let a = ring.read_bytes(0x10000, 64);
    let b = ring.read_bytes(0x20000, 64);
    assert_ne!(a, vec![0; 64]);
    assert_ne!(a, b);
}

#[test]
fn large_requests_are_capped() {
    let ring = TestRing::new(8);
    ring.desc(0, 0x10000, 0x20_0000, WRITE, 0);
    assert_eq!(chain(&ring), Some(MAX_REQUEST as u32));
    assert_eq!(
        ring.read_bytes(0x10000 + MAX_REQUEST as u64, 16),
        vec![0; 16]
    );
}

#[test]
fn bad_chains_are_refused() {
    let ring = TestRing::new(8);
    ring.desc(0, 0x10000, 64, 0, 0);
    assert_eq!(chain(&ring), None, "read-only buffer");
    ring.desc(0, MEM_SIZE - 8, 64, WRITE, 0);
    assert_eq!(chain(&ring), None, "outside memory");
    ring.desc(0, 0x10000, 64, WRITE | NEXT, 0);
    assert_eq!(chain(&ring), None, "loop");
    assert_eq!(ring.read_bytes(0x10000, 64), vec![0; 64]);
}

#[test]
fn device_offers_version_1_and_one_queue() {
    let r = Rng::new();
    assert_eq!(r.features(), F_VERSION_1 | crate::virtio::F_RING_EVENT_IDX);
    assert_eq!(r.queue_max_sizes(), &[QUEUE_SIZE]);
    assert_eq!(r.device_type(), device_type::RNG);
}
