//! The device: its config space and features, activation, and the worker thread serving
//! both queues.

use super::*;

#[test]
fn device_config_features_and_mac() {
    let (b, _) = fake();
    let mac = mac_from_seed(b"tap0");
    assert_eq!(mac, mac_from_seed(b"tap0"));
    assert_ne!(mac, mac_from_seed(b"tap1"));
    assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
    let n = Net::new(b, mac);
    assert_eq!(n.device_type(), 1);
    assert_eq!(n.queue_max_sizes().len(), 2);
    let f = n.features();
    assert_ne!(f & F_VERSION_1, 0);
    assert_eq!(
        f & (F_MAC | F_STATUS | OFFLOAD_FEATURES),
        F_MAC | F_STATUS | OFFLOAD_FEATURES
    );
    let mut cfg = [0u8; 12];
    n.read_config(0, &mut cfg);
    assert_eq!(cfg[..6], mac);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), S_LINK_UP);
    assert_eq!(cfg[10..], [0, 0], "past the end reads zero");
}

fn activate(n: &mut Net, queues: Vec<Queue>, events: usize) -> Result<(), ActivateError> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let ev = (0..events)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    n.activate(mem, Arc::new(Irq::default()), queues, ev)
}

#[test]
fn activation_sets_the_accepted_offloads_only() {
    let (b, state) = fake();
    let mut n = Net::new(b, [2, 0, 0, 0, 0, 1]);
    n.ack_features(F_VERSION_1 | F_GUEST_CSUM | (1 << 40));
    assert_eq!(state.lock().unwrap().offload, None, "not before activation");
    let q = || Queue::new(16).unwrap();
    assert!(matches!(
        activate(&mut n, vec![q()], 1),
        Err(ActivateError::QueueCount { got: 1, .. })
    ));
    activate(&mut n, vec![q(), q()], 2).unwrap();
    assert_eq!(
        state.lock().unwrap().offload,
        Some(F_VERSION_1 | F_GUEST_CSUM)
    );
    n.reset();
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn the_worker_thread_serves_both_directions() {
    let (b, state, readable) = fake_with_fd();
    let mut n = Net::new(b, [2, 0, 0, 0, 0, 2]);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let (mut rx, mut tx) = (Ring::new(&mem, 0x1000), Ring::new(&mem, 0x4000));
    let events: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let kicks: Vec<EventFd> = events.iter().map(|e| e.try_clone().unwrap()).collect();
    let irq = Arc::new(Irq::default());
    n.activate(
        mem.clone(),
        irq.clone(),
        vec![rx.queue(), tx.queue()],
        events,
    )
    .unwrap();
    // Host to guest: a frame arrives, then the guest posts a buffer and kicks.
    let frame = pattern(90, 6);
    state.lock().unwrap().incoming.push_back(frame.clone());
    readable.write(1).unwrap();
    rx.desc(0, 0x10000, 2048, WRITE, 0);
    rx.push(0);
    kicks[0].write(1).unwrap();
    wait_for("the rx frame", || rx.used_idx() == 1);
    assert_eq!(rx.used(0), (0, 90));
    let mut got = vec![0; 90];
    mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
    assert_eq!(got[12..], frame[12..]);
    // A second frame while a buffer waits: the backend's readiness alone delivers it.
    rx.desc(1, 0x11000, 2048, WRITE, 0);
    rx.push(1);
    kicks[0].write(1).unwrap();
    state.lock().unwrap().incoming.push_back(pattern(70, 8));
    readable.write(1).unwrap();
    wait_for("the second rx frame", || rx.used_idx() == 2);
    // Guest to host.
    let out = pattern(64, 7);
    mem.write_slice(&out, GuestAddress(0x20000)).unwrap();
    tx.desc(0, 0x20000, 64, 0, 0);
    tx.push(0);
    kicks[1].write(1).unwrap();
    wait_for("the tx frame", || !state.lock().unwrap().sent.is_empty());
    assert_eq!(state.lock().unwrap().sent, vec![out]);
    wait_for("the tx used entry", || tx.used_idx() == 1);
    assert!(irq.0.load(Ordering::SeqCst) >= 1 && irq.1.load(Ordering::SeqCst) >= 1);
    let stats = n.stats();
    assert_eq!(stats.rx_frames.load(Ordering::Relaxed), 2);
    assert_eq!(stats.tx_frames.load(Ordering::Relaxed), 1);
    n.reset();
}

/// Waits a little and checks `what` did not happen (a stopped worker touches nothing).
fn stays(what: &str, mut unchanged: impl FnMut() -> bool) {
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(unchanged(), "{what}");
}

#[test]
fn reset_stops_the_worker_and_a_second_activation_serves_new_rings() {
    let (b, state, readable) = fake_with_fd();
    let mut n = Net::new(b, [2, 0, 0, 0, 0, 3]);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    // The transport keeps one eventfd per queue for the card's life: both activations get
    // clones of the same ones.
    let events: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let clones = || -> Vec<EventFd> { events.iter().map(|e| e.try_clone().unwrap()).collect() };
    let irq = Arc::new(Irq::default());
    let (rx1, mut tx1) = (Ring::new(&mem, 0x1000), Ring::new(&mem, 0x4000));
    n.ack_features(F_VERSION_1 | F_GUEST_CSUM | F_GUEST_TSO4);
    n.activate(
        mem.clone(),
        irq.clone(),
        vec![rx1.queue(), tx1.queue()],
        clones(),
    )
    .unwrap();
    assert_eq!(
        state.lock().unwrap().offload,
        Some(F_VERSION_1 | F_GUEST_CSUM | F_GUEST_TSO4)
    );
    mem.write_slice(&pattern(60, 1), GuestAddress(0x20000))
        .unwrap();
    tx1.desc(0, 0x20000, 60, 0, 0);
    tx1.push(0);
    events[1].write(1).unwrap();
    wait_for("the first tx frame", || {
        state.lock().unwrap().sent.len() == 1
    });
    wait_for("the first tx used entry", || tx1.used_idx() == 1);

    // Frames queued for the old driver (built with its offloads) while it resets.
    for seed in 0..3 {
        state.lock().unwrap().incoming.push_back(pattern(80, seed));
    }
    n.reset();
    assert_eq!(state.lock().unwrap().offload, Some(0), "offloads cleared");
    assert!(
        state.lock().unwrap().incoming.is_empty(),
        "stale frames dropped"
    );
    assert_eq!(n.stats().rx_drops.load(Ordering::Relaxed), 3);
    // The old worker is gone: a kick on the old ring is not served (an ioeventfd still writes
    // the eventfd while the driver sets the card up again).
    tx1.desc(1, 0x20000, 60, 0, 0);
    tx1.push(1);
    events[1].write(1).unwrap();
    stays("the old ring was served after reset", || {
        tx1.used_idx() == 1 && state.lock().unwrap().sent.len() == 1
    });

    // Second activation: other ring addresses, fewer features.
    let (mut rx2, mut tx2) = (Ring::new(&mem, 0x40000), Ring::new(&mem, 0x48000));
    n.ack_features(F_VERSION_1);
    n.activate(
        mem.clone(),
        irq.clone(),
        vec![rx2.queue(), tx2.queue()],
        clones(),
    )
    .unwrap();
    assert_eq!(state.lock().unwrap().offload, Some(F_VERSION_1));
    // The stale tx kick, served or not yet, finds nothing on the new ring.
    assert_eq!(tx2.used_idx(), 0);
    let frame = pattern(90, 9);
    state.lock().unwrap().incoming.push_back(frame.clone());
    readable.write(1).unwrap();
    rx2.desc(0, 0x50000, 2048, WRITE, 0);
    rx2.push(0);
    events[0].write(1).unwrap();
    wait_for("the rx frame on the new ring", || rx2.used_idx() == 1);
    assert_eq!(rx2.used(0), (0, 90));
    let mut got = vec![0; 90];
    mem.read_slice(&mut got, GuestAddress(0x50000)).unwrap();
    assert_eq!(got[12..], frame[12..]);
    let out = pattern(64, 5);
    mem.write_slice(&out, GuestAddress(0x60000)).unwrap();
    tx2.desc(0, 0x60000, 64, 0, 0);
    tx2.push(0);
    events[1].write(1).unwrap();
    wait_for("the tx frame on the new ring", || tx2.used_idx() == 1);
    assert_eq!(state.lock().unwrap().sent.last(), Some(&out));
    assert_eq!(
        state.lock().unwrap().sent.len(),
        2,
        "the old chain never went out"
    );
    assert_eq!(tx1.used_idx(), 1, "the old ring stays untouched");
    assert_eq!(rx1.used_idx(), 0);
    n.reset();
}
