//! virtio-balloon on a real KVM VM's memfd guest RAM, driven from the host side through the
//! PCI bus (the vCPUs never run, so this works on a PVM host too): the target set through the
//! handle shows in the device config with a new generation, and an inflate through the queue
//! lowers this process's shared-memory RSS. One test in this binary, so no other test's guest
//! memory moves the RSS figure.

mod guest;

use std::time::{Duration, Instant};

use guest::{config, Asm, Captured};
use vm_memory::{Bytes, GuestAddress};
use vmm::{BalloonConfig, Vm};

fn cfg_read32(vm: &Vm, dev: u8, reg: u8) -> u32 {
    let addr = 0x8000_0000u32 | u32::from(dev) << 11 | u32::from(reg);
    assert!(vm.io_bus().write(0xcf8, &addr.to_le_bytes()));
    let mut b = [0u8; 4];
    assert!(vm.io_bus().read(0xcfc, &mut b));
    u32::from_le_bytes(b)
}

fn bar_write(vm: &Vm, bar: u64, off: u64, v: u64, len: usize) {
    assert!(vm.mmio_bus().write(bar + off, &v.to_le_bytes()[..len]));
}

fn bar_read(vm: &Vm, bar: u64, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    assert!(vm.mmio_bus().read(bar + off, &mut b[..len]));
    u64::from_le_bytes(b)
}

/// RssShmem of this process in KiB.
fn rss_shmem_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssShmem:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssShmem in /proc/self/status")
}

#[test]
fn balloon_target_config_and_inflate_on_guest_ram() {
    let mut vm = Vm::new(&config(Asm::default(), 1), Box::new(Captured::default())).unwrap();
    let too_big = BalloonConfig {
        size: 64 << 20,
        deflate_on_oom: false,
        free_page_reporting: false,
    };
    let err = vm.pci().add_balloon(&too_big).unwrap_err();
    assert!(
        err.to_string().contains("larger than guest memory"),
        "{err}"
    );
    let handle = vm
        .pci()
        .add_balloon(&BalloonConfig {
            size: 1 << 20,
            deflate_on_oom: true,
            free_page_reporting: true,
        })
        .unwrap();
    assert_eq!(cfg_read32(&vm, 1, 0), 0x1045_1af4, "virtio-balloon");
    let bar = u64::from(cfg_read32(&vm, 1, 0x10) & !0xf);
    let cmd = 0x8000_0000u32 | 1 << 11 | 0x04;
    assert!(vm.io_bus().write(0xcf8, &cmd.to_le_bytes()));
    assert!(vm.io_bus().write(0xcfc, &0x0006u16.to_le_bytes()));
    assert_eq!(bar_read(&vm, bar, 0x12, 2), 4, "four queues");
    assert_eq!(
        bar_read(&vm, bar, 0x04, 4),
        0b10_0110,
        "stats, deflate-on-oom, reporting"
    );
    assert_eq!(bar_read(&vm, bar, 0x2000, 4), 256, "num_pages");
    let gen = bar_read(&vm, bar, 0x15, 1);
    handle.set_target(2 << 20).unwrap();
    assert_eq!(bar_read(&vm, bar, 0x2000, 4), 512);
    assert_eq!(bar_read(&vm, bar, 0x15, 1), gen + 1, "config generation");
    // A driver that accepts only VERSION_1: inflate is queue 0, deflate queue 1.
    for s in [1u64, 3] {
        bar_write(&vm, bar, 0x14, s, 1);
    }
    bar_write(&vm, bar, 0x08, 1, 4);
    bar_write(&vm, bar, 0x0c, 1, 4);
    bar_write(&vm, bar, 0x14, 0xb, 1);
    for (q, base) in [(0u64, 0x10000u64), (1, 0x14000)] {
        bar_write(&vm, bar, 0x16, q, 2);
        bar_write(&vm, bar, 0x18, 16, 2);
        bar_write(&vm, bar, 0x20, base, 8);
        bar_write(&vm, bar, 0x28, base + 0x1000, 8);
        bar_write(&vm, bar, 0x30, base + 0x2000, 8);
        bar_write(&vm, bar, 0x1c, 1, 2);
    }
    bar_write(&vm, bar, 0x14, 0xf, 1);
    assert_eq!(
        bar_read(&vm, bar, 0x14, 1),
        0xf,
        "activated with two of four queues"
    );
    let mem = vm.memory().clone();
    let w = |addr: u64, bytes: &[u8]| mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    // 1 MiB of guest data, then its 256 page numbers into the balloon.
    w(0x10_0000, &vec![0xab; 1 << 20]);
    let pfns: Vec<u8> = (0x100u32..0x200).flat_map(|p| p.to_le_bytes()).collect();
    w(0x18000, &pfns);
    let mut d = Vec::new();
    d.extend_from_slice(&0x18000u64.to_le_bytes());
    d.extend_from_slice(&(pfns.len() as u32).to_le_bytes());
    d.extend_from_slice(&[0; 4]);
    w(0x10000, &d);
    w(0x11004, &0u16.to_le_bytes());
    w(0x11002, &1u16.to_le_bytes());
    let before = rss_shmem_kib();
    bar_write(&vm, bar, 0x3000, 0, 2);
    let start = Instant::now();
    let used = || mem.read_obj::<u16>(GuestAddress(0x12002)).unwrap();
    while used() != 1 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(used(), 1, "the inflate chain was returned");
    let after = rss_shmem_kib();
    assert!(
        after + 900 <= before,
        "RssShmem {before} KiB -> {after} KiB: 1 MiB should have gone back"
    );
    let c = handle.counters();
    assert_eq!((c.inflated_pages, c.bad_pfns), (256, 0), "{c:?}");
    // The driver reports its progress in `actual`.
    bar_write(&vm, bar, 0x2004, 256, 4);
    assert_eq!(handle.counters().actual_bytes, 1 << 20);
    let mut page = vec![1u8; 4096];
    mem.read_slice(&mut page, GuestAddress(0x18_0000)).unwrap();
    assert!(
        page.iter().all(|&b| b == 0),
        "released pages read back as zeros"
    );
}
