//! The balloon device: features, queue roles, configuration space, activation with the
//! queues the driver enabled, and the worker thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::queue_tests::Irq;
use super::*;
use crate::virtio::testmem::*;
use crate::virtio::InterruptKind;

fn balloon(opts: BalloonOptions) -> Balloon {
    Balloon::new(&opts, MEM_SIZE).unwrap()
}

fn cfg(b: &Balloon, off: u64, len: usize) -> u64 {
    let mut d = [0u8; 8];
    b.read_config(off, &mut d[..len]);
    u64::from_le_bytes(d)
}

#[test]
fn features_follow_the_options() {
    let b = balloon(BalloonOptions::default());
    assert_eq!(b.features(), F_VERSION_1 | F_STATS_VQ);
    assert_eq!(b.device_type(), 5);
    assert_eq!(b.queue_max_sizes().len(), 4);
    let b = balloon(BalloonOptions {
        deflate_on_oom: true,
        free_page_reporting: true,
        ..Default::default()
    });
    assert_eq!(
        b.features(),
        F_VERSION_1 | F_STATS_VQ | F_DEFLATE_ON_OOM | F_FREE_PAGE_REPORTING
    );
    assert_eq!(
        F_STATS_VQ | F_DEFLATE_ON_OOM | F_FREE_PAGE_REPORTING,
        0b10_0110
    );
}

#[test]
fn queue_roles_skip_features_the_driver_did_not_accept() {
    use Role::*;
    let both = F_STATS_VQ | F_FREE_PAGE_REPORTING;
    assert_eq!(queue_roles(F_VERSION_1), vec![Inflate, Deflate]);
    assert_eq!(queue_roles(F_STATS_VQ), vec![Inflate, Deflate, Stats]);
    assert_eq!(
        queue_roles(F_FREE_PAGE_REPORTING | F_DEFLATE_ON_OOM),
        vec![Inflate, Deflate, Reporting]
    );
    assert_eq!(queue_roles(both), vec![Inflate, Deflate, Stats, Reporting]);
}

#[test]
fn config_target_actual_and_the_config_interrupt() {
    let mut b = balloon(BalloonOptions {
        size: 0x10_0000 + 100, // rounded down to pages
        ..Default::default()
    });
    let irq = Arc::new(Irq::default());
    b.set_config_interrupt(irq.clone());
    assert_eq!(cfg(&b, 0, 4), 256);
    assert_eq!(cfg(&b, 4, 4), 0);
    // The driver writes actual (whole, then one half); num_pages is not its to write.
    b.write_config(4, &77u32.to_le_bytes());
    b.write_config(6, &1u16.to_le_bytes());
    b.write_config(0, &5u32.to_le_bytes());
    b.write_config(u64::MAX, &[1, 2]);
    assert_eq!(cfg(&b, 0, 4), 256);
    assert_eq!(cfg(&b, 4, 4), 0x1_004d);
    assert_eq!(
        cfg(&b, 8, 8),
        0,
        "hint command id and poison value read as zero"
    );
    let h = b.handle();
    assert_eq!(h.counters().actual_bytes, 0x1_004d * 4096);
    h.set_target(2 << 20).unwrap();
    assert_eq!(cfg(&b, 0, 4), 512);
    h.set_target(2 << 20).unwrap();
    assert_eq!(
        *irq.0.lock().unwrap(),
        vec![InterruptKind::Config],
        "once per change"
    );
    let err = h.set_target(MEM_SIZE + 4096).unwrap_err();
    assert!(
        err.to_string().contains("larger than guest memory"),
        "{err}"
    );
    assert_eq!(h.counters().target_bytes, 2 << 20);
    assert!(Balloon::new(
        &BalloonOptions {
            size: MEM_SIZE * 2,
            ..Default::default()
        },
        MEM_SIZE
    )
    .is_err());
    b.reset();
    assert_eq!(cfg(&b, 4, 4), 0, "a reset driver has no balloon");
}

/// A ready queue at `base` (desc, avail, used at +0, +0x400, +0x800), with nothing available.
fn idle_queue(base: u64) -> Queue {
    let mut q = Queue::new(16).unwrap();
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some(base as u32 + 0x400), Some(0));
    q.set_used_ring_address(Some(base as u32 + 0x800), Some(0));
    q.set_ready(true);
    q
}

fn events(n: usize) -> Vec<EventFd> {
    (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect()
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Activates with four transport queues where the test ring is queue `test_index`.
fn activate(b: &mut Balloon, ring: &TestRing, acked: u64, test_index: usize) -> Vec<EventFd> {
    b.ack_features(acked);
    let mut queues: Vec<Queue> = (0..4).map(|i| idle_queue(0x8000 + i * 0x1000)).collect();
    queues[test_index] = ring.queue();
    // The fourth queue is left disabled, as a driver without every feature leaves it.
    if test_index != 3 {
        queues[3] = Queue::new(16).unwrap();
    }
    let evts = events(4);
    let kicks = evts.iter().map(|e| e.try_clone().unwrap()).collect();
    b.activate(ring.mem.clone(), Arc::new(Irq::default()), queues, evts)
        .unwrap();
    kicks
}

#[test]
fn without_stats_the_reporting_queue_is_queue_2() {
    let ring = TestRing::new_memfd(16);
    let mut b = balloon(BalloonOptions {
        free_page_reporting: true,
        ..Default::default()
    });
    ring.write_bytes(0x20_0000, &[0x5a; 0x4000]);
    let kicks = activate(&mut b, &ring, F_VERSION_1 | F_FREE_PAGE_REPORTING, 2);
    let mut ring = ring;
    ring.desc(0, 0x20_0000, 0x4000, WRITE, 0);
    ring.push(0);
    kicks[2].write(1).unwrap();
    wait_for("the report is returned", || ring.used_idx() == 1);
    assert_eq!(b.handle().counters().reported_bytes, 0x4000);
    assert!(ring.read_bytes(0x20_0000, 0x4000).iter().all(|&x| x == 0));
    b.reset();
}

#[test]
fn with_stats_queue_2_is_stats_and_the_worker_hands_it_back() {
    let ring = TestRing::new_memfd(16);
    let mut b = balloon(BalloonOptions {
        free_page_reporting: true,
        stats_interval: Duration::from_secs(3600),
        ..Default::default()
    });
    let mut ring = ring;
    let entry: Vec<u8> = 4u16
        .to_le_bytes()
        .into_iter()
        .chain(42u64.to_le_bytes())
        .collect();
    ring.write_bytes(0x30000, &entry);
    ring.desc(0, 0x30000, 10, 0, 0);
    ring.push(0);
    // Available before activation: served when the worker starts.
    let acked = F_VERSION_1 | F_STATS_VQ | F_FREE_PAGE_REPORTING;
    let _kicks = activate(&mut b, &ring, acked, 2);
    let h = b.handle();
    wait_for("stats read", || h.counters().stats_updates == 1);
    assert_eq!(h.counters().guest.values[4], Some(42));
    assert_eq!(ring.used_idx(), 0);
    h.request_stats();
    wait_for("buffer handed back", || ring.used_idx() == 1);
    b.reset();
}

#[test]
fn the_stats_interval_hands_the_buffer_back_by_itself() {
    let mut ring = TestRing::new_memfd(16);
    let mut b = balloon(BalloonOptions {
        stats_interval: Duration::from_millis(50),
        ..Default::default()
    });
    let entry: Vec<u8> = 5u16
        .to_le_bytes()
        .into_iter()
        .chain(7u64.to_le_bytes())
        .collect();
    ring.write_bytes(0x30000, &entry);
    ring.desc(0, 0x30000, 10, 0, 0);
    ring.push(0);
    let _kicks = activate(&mut b, &ring, F_VERSION_1 | F_STATS_VQ, 2);
    wait_for("interval return", || ring.used_idx() == 1);
    drop(b);
}

#[test]
fn activation_needs_inflate_and_deflate() {
    let ring = TestRing::new_memfd(16);
    let mut b = balloon(BalloonOptions::default());
    b.ack_features(F_VERSION_1 | F_STATS_VQ);
    let mut queues: Vec<Queue> = (0..4).map(|i| idle_queue(0x8000 + i * 0x1000)).collect();
    queues[1] = Queue::new(16).unwrap(); // deflate not enabled
    let err = b
        .activate(
            ring.mem.clone(),
            Arc::new(Irq::default()),
            queues,
            events(4),
        )
        .unwrap_err();
    assert!(err.to_string().contains("queues"), "{err}");
    // Too few queues for the roles, or events that do not match.
    let queues: Vec<Queue> = (0..2).map(|i| idle_queue(0x8000 + i * 0x1000)).collect();
    assert!(b
        .activate(
            ring.mem.clone(),
            Arc::new(Irq::default()),
            queues,
            events(2)
        )
        .is_err());
    let queues: Vec<Queue> = (0..4).map(|i| idle_queue(0x8000 + i * 0x1000)).collect();
    assert!(b
        .activate(
            ring.mem.clone(),
            Arc::new(Irq::default()),
            queues,
            events(3)
        )
        .is_err());
    // Stats accepted but its queue not enabled: served without it.
    let mut queues: Vec<Queue> = (0..4).map(|i| idle_queue(0x8000 + i * 0x1000)).collect();
    queues[2] = Queue::new(16).unwrap();
    b.activate(
        ring.mem.clone(),
        Arc::new(Irq::default()),
        queues,
        events(4),
    )
    .unwrap();
    b.reset();
}
