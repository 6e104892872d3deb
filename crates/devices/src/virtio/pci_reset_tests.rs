//! A driver that resets the device (status 0, as Linux does when its driver is unbound) and
//! sets it up again on other rings: the first activation's worker is gone, the second one
//! serves the new rings through the same queue eventfds (the VMM's ioeventfds).

use super::*;

/// A one-sector read of sector `sector` on `ring`, its header at `at`, its data at `at +
/// 0x1000`, its status at `at + 0x2000`, with descriptors `head..head + 3`.
fn read_request(ring: &mut TestRing, head: u16, at: u64, sector: u64) {
    ring.write(at, 0u32);
    ring.write(at + 8, sector);
    ring.desc(head, at, 16, NEXT, head + 1);
    ring.desc(head + 1, at + 0x1000, 512, WRITE | NEXT, head + 2);
    ring.desc(head + 2, at + 0x2000, 1, WRITE, 0);
    ring.push(head);
}

fn wait(ring: &TestRing, n: u16) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if ring.used_idx() == n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn a_reset_device_serves_a_second_activation_on_new_rings() {
    let mut d = Driver::new();
    d.enable_msix();
    d.negotiate(F_VERSION_1);
    d.setup_queue();
    d.w(0x14, 0xf, 1);
    d.queue_read();
    let kick = d.dev.queue_events()[0].try_clone().unwrap();
    kick.write(1).unwrap();
    assert!(d.wait_used(1), "first activation serves");

    d.w(0x14, 0, 1);
    assert_eq!(d.status(), 0);
    // A request on the old ring, notified through the ioeventfd (which KVM still writes while
    // the driver sets the device up again) and through the BAR: nobody serves it.
    read_request(&mut d.ring, 3, 0x40000, 5);
    kick.write(1).unwrap();
    d.w(0x3000, 0, 2);
    assert_eq!(d.dev.stats().refused_notifies, 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        d.ring.used_idx(),
        1,
        "the old ring is not served after reset"
    );

    // Second life: EVENT_IDX this time, a ring of 8 at another address, vector 0 again.
    d.negotiate(F_VERSION_1 | crate::virtio::F_RING_EVENT_IDX);
    assert_eq!(d.status() & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
    let mut ring = TestRing::at(&d.ring.mem, 0x80000, 8);
    d.w(0x16, 0, 2);
    d.w(0x18, 8, 2);
    d.w(0x20, 0x80000, 8);
    d.w(0x28, 0x82000, 8);
    d.w(0x30, 0x83000, 8);
    d.w(0x1a, 0, 2);
    d.w(0x1c, 1, 2);
    d.w(0x14, 0xf, 1);
    assert_eq!(d.status(), 0xf);
    assert_eq!(d.dev.stats().failed_activations, 0);
    let fired = d.msi.fired.lock().unwrap().len();
    read_request(&mut ring, 0, 0x90000, 7);
    kick.write(1).unwrap();
    assert!(wait(&ring, 1), "second activation serves the new ring");
    assert_eq!(ring.used(0), (0, 513));
    assert!(ring.read_bytes(0x91000, 512).iter().all(|&b| b == 7));
    assert_eq!(ring.read_bytes(0x92000, 1), vec![0], "status OK");
    let start = Instant::now();
    while d.msi.fired.lock().unwrap().len() == fired && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(d.msi.fired.lock().unwrap()[fired..], [0]);
    assert_eq!(d.ring.used_idx(), 1, "the old ring stays untouched");
    assert_eq!(d.ring.read_bytes(0x41000, 512), vec![0; 512]);
    d.w(0x14, 0, 1);
}
