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

struct NoIrq;
impl VirtioInterrupt for NoIrq {
    fn trigger(&self, _kind: crate::virtio::InterruptKind) -> std::io::Result<()> {
        Ok(())
    }
}

fn wait_used(ring: &TestRing, n: u16) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(5) {
        if ring.used_idx() == n {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

#[test]
fn reset_stops_serving_and_a_second_activation_serves_a_new_ring() {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;
    let mut first = TestRing::new(8);
    let mem = first.mem.clone();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut r = Rng::new();
    let irq: Arc<dyn VirtioInterrupt> = Arc::new(NoIrq);
    r.activate(
        mem.clone(),
        irq.clone(),
        vec![first.queue()],
        vec![kick.try_clone().unwrap()],
    )
    .unwrap();
    first.desc(0, 0x10000, 32, WRITE, 0);
    first.push(0);
    kick.write(1).unwrap();
    assert!(wait_used(&first, 1), "served before the reset");
    r.reset();
    first.desc(1, 0x11000, 32, WRITE, 0);
    first.push(1);
    kick.write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        first.used_idx(),
        1,
        "the old ring is not served after reset"
    );
    assert_eq!(first.read_bytes(0x11000, 32), vec![0; 32]);
    // Again on a ring of another size elsewhere, with the same eventfd (still signalled).
    let mut second = TestRing::at(&mem, 0x80000, 4);
    r.activate(
        mem.clone(),
        irq,
        vec![second.queue()],
        vec![kick.try_clone().unwrap()],
    )
    .unwrap();
    second.desc(0, 0x90000, 48, WRITE, 0);
    second.push(0);
    kick.write(1).unwrap();
    assert!(wait_used(&second, 1), "served after the second activation");
    assert_eq!(second.used(0), (0, 48));
    assert_ne!(second.read_bytes(0x90000, 48), vec![0; 48]);
    assert_eq!(first.used_idx(), 1);
    assert_eq!(r.stats().bytes.load(Ordering::Relaxed), 80);
    r.reset();
}
