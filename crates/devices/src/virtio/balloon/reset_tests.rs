//! A driver that resets the balloon (status 0: Linux's driver unbound or reloaded, kexec) and
//! sets it up again on other rings. The reset drops the old queues with the statistics buffer
//! the device held; pages that were inflated stay punched in the memfd but are the guest's
//! again (they fault back in when touched); `actual` falls to zero and the target stays, so the
//! next driver inflates to it again (virtio spec: the driver inflates towards `num_pages`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::queue_tests::Irq;
use super::*;
use crate::virtio::testmem::*;

/// One activation's rings: inflate, deflate and stats at `base`, `base + 0x4000`, `base +
/// 0x8000` (queues 0, 1, 2; queue 3 is left disabled).
struct Life {
    inflate: TestRing,
    stats: TestRing,
}

impl Life {
    fn rings(mem: &vm_memory::GuestMemoryMmap, base: u64) -> (Life, Vec<Queue>) {
        let rings: Vec<TestRing> = (0..3)
            .map(|i| TestRing::at(mem, base + 0x4000 * i, 16))
            .collect();
        let mut queues: Vec<Queue> = rings.iter().map(|r| r.queue()).collect();
        queues.push(Queue::new(16).unwrap());
        let mut rings = rings.into_iter();
        let inflate = rings.next().unwrap();
        let stats = rings.nth(1).unwrap();
        (Life { inflate, stats }, queues)
    }

    /// A statistics buffer with one entry (free_memory = `free`) as descriptor `head`.
    fn stats_buffer(&mut self, at: u64, head: u16, free: u64) {
        let entry: Vec<u8> = 4u16
            .to_le_bytes()
            .into_iter()
            .chain(free.to_le_bytes())
            .collect();
        self.stats.write_bytes(at, &entry);
        self.stats.desc(head, at, 10, 0, 0);
        self.stats.push(head);
    }

    /// Inflates pages `pfns` (a chain of le32 at `at`).
    fn inflate(&mut self, at: u64, pfns: std::ops::Range<u32>) {
        let bytes: Vec<u8> = pfns.flat_map(|p| p.to_le_bytes()).collect();
        self.inflate.write_bytes(at, &bytes);
        self.inflate.desc(0, at, bytes.len() as u32, 0, 0);
        self.inflate.push(0);
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_reset_balloon_gives_the_guest_its_pages_and_serves_new_rings() {
    let memory = TestRing::new_memfd(16);
    let mem = memory.mem.clone();
    let mut b = Balloon::new(
        &BalloonOptions {
            stats_interval: Duration::from_secs(3600),
            ..Default::default()
        },
        MEM_SIZE,
    )
    .unwrap();
    let irq = Arc::new(Irq::default());
    b.set_config_interrupt(irq.clone());
    let h = b.handle();
    // The transport's queue eventfds (KVM's ioeventfds) outlive every activation.
    let kicks: Vec<EventFd> = (0..4)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let clones = || kicks.iter().map(|e| e.try_clone().unwrap()).collect();
    let pages = 0x10_0000..0x10_8000u64;
    let page_len = (pages.end - pages.start) as usize;
    memory.write_bytes(pages.start, &vec![0x5a; page_len]);

    // First life: the stats buffer is primed before DRIVER_OK, eight pages are inflated.
    h.set_target(8 * 4096).unwrap();
    let (mut first, queues) = Life::rings(&mem, 0x2_0000);
    first.stats_buffer(0x8_0000, 0, 111);
    b.ack_features(F_VERSION_1 | F_STATS_VQ);
    b.activate(mem.clone(), irq.clone(), queues, clones())
        .unwrap();
    wait_for("first stats", || h.counters().stats_updates == 1);
    first.inflate(0x8_1000, 0x100..0x108);
    let blocks = memory.allocated_blocks();
    kicks[0].write(1).unwrap();
    wait_for("inflate served", || first.inflate.used_idx() == 1);
    assert_eq!(h.counters().inflated_pages, 8);
    assert!(
        memory.allocated_blocks() + 8 * 8 <= blocks,
        "the pages went to the host"
    );
    assert!(memory
        .read_bytes(pages.start, page_len)
        .iter()
        .all(|&x| x == 0));
    b.write_config(4, &8u32.to_le_bytes());
    assert_eq!(h.counters().actual_bytes, 8 * 4096);

    // Reset with the pages still inflated (a driver that did not deflate first, as after a
    // kexec) and the stats buffer held by the device.
    b.reset();
    let c = h.counters();
    assert_eq!(
        c.actual_bytes, 0,
        "the guest holds no balloon after a reset"
    );
    assert_eq!(
        c.target_bytes,
        8 * 4096,
        "the target is the VMM's: it stays"
    );
    h.request_stats();
    first.inflate(0x8_1000, 0x108..0x10a);
    kicks[0].write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        first.stats.used_idx(),
        0,
        "the old stats buffer is not handed back"
    );
    assert_eq!(
        first.inflate.used_idx(),
        1,
        "the old inflate ring is not served"
    );
    assert_eq!(h.counters().inflated_pages, 8);
    // The inflated pages are the guest's again: they fault back in and keep what is written.
    memory.write_bytes(pages.start, &vec![0x77; page_len]);
    assert!(memory
        .read_bytes(pages.start, page_len)
        .iter()
        .all(|&x| x == 0x77));

    // Second life on other rings: its own stats buffer (the request made during the reset is
    // answered with it, never with the old one), and the driver inflates to the target again.
    let (mut second, queues) = Life::rings(&mem, 0x4_0000);
    second.stats_buffer(0x8_2000, 3, 222);
    b.ack_features(F_VERSION_1 | F_STATS_VQ);
    b.activate(mem.clone(), irq.clone(), queues, clones())
        .unwrap();
    wait_for("second stats", || h.counters().stats_updates == 2);
    assert_eq!(h.counters().guest.values[4], Some(222));
    wait_for("new buffer handed back", || second.stats.used_idx() == 1);
    assert_eq!(second.stats.used(0), (3, 0));
    second.inflate(0x8_3000, 0x100..0x108);
    kicks[0].write(1).unwrap();
    wait_for("inflate again", || second.inflate.used_idx() == 1);
    assert_eq!(h.counters().inflated_pages, 16);
    assert!(memory
        .read_bytes(pages.start, page_len)
        .iter()
        .all(|&x| x == 0));
    assert_eq!(first.stats.used_idx(), 0);
    assert_eq!(first.inflate.used_idx(), 1);
    b.reset();
}
