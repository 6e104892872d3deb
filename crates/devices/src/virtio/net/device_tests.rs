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
