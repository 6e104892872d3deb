use std::path::Path;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::net::vhost_dev::VhostMode;
use crate::virtio::{InterruptKind, VirtioInterrupt, F_VERSION_1};

const MIB: u64 = 1 << 20;

/// Two regions adjacent in guest physical memory (separate mappings on the host) and a third
/// after a hole.
fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MIB as usize),
        (GuestAddress(MIB), MIB as usize),
        (GuestAddress(4 * MIB), MIB as usize),
    ])
    .unwrap()
}

fn ring(desc: u64, avail: u64, used: u64) -> RingConfig {
    RingConfig {
        index: 1,
        size: 256,
        desc,
        avail,
        used,
    }
}

#[test]
fn ioctl_numbers_match_linux_vhost_h() {
    assert_eq!(VHOST_GET_FEATURES(), 0x8008_af00);
    assert_eq!(VHOST_SET_FEATURES(), 0x4008_af00);
    assert_eq!(VHOST_SET_OWNER(), 0xaf01);
    assert_eq!(VHOST_SET_MEM_TABLE(), 0x4008_af03);
    assert_eq!(VHOST_SET_VRING_NUM(), 0x4008_af10);
    assert_eq!(VHOST_SET_VRING_ADDR(), 0x4028_af11);
    assert_eq!(VHOST_SET_VRING_BASE(), 0x4008_af12);
    assert_eq!(VHOST_GET_VRING_BASE(), 0xc008_af12);
    assert_eq!(VHOST_SET_VRING_KICK(), 0x4008_af20);
    assert_eq!(VHOST_SET_VRING_CALL(), 0x4008_af21);
    assert_eq!(VHOST_NET_SET_BACKEND(), 0x4008_af30);
    assert_eq!(std::mem::size_of::<MemoryRegion>(), 32);
}

#[test]
fn rings_inside_one_region_get_host_addresses() {
    let m = mem();
    let r = ring(0x1000, 0x2000, 0x3000);
    let h = ring_addrs(&m, &r).unwrap();
    let base = m.get_host_address(GuestAddress(0)).unwrap() as u64;
    assert_eq!(
        (h.desc, h.avail, h.used),
        (base + 0x1000, base + 0x2000, base + 0x3000)
    );
    // In the region after the hole, ending exactly at its end.
    let used_len = 6 + 8 * 256;
    let end = 5 * MIB;
    let r = ring(4 * MIB, 4 * MIB + 0x1000, end - used_len - 2);
    let h = ring_addrs(&m, &r).unwrap();
    let base = m.get_host_address(GuestAddress(4 * MIB)).unwrap() as u64;
    assert_eq!(h.used, base + (end - used_len - 2 - 4 * MIB));
}

#[test]
fn guest_rings_outside_memory_are_refused() {
    let m = mem();
    let ok = (0x1000, 0x2000, 0x3000);
    let bad = |desc, avail, used| ring_addrs(&m, &ring(desc, avail, used)).unwrap_err();
    for (case, err) in [
        ("beyond memory", bad(8 * MIB, ok.1, ok.2)),
        ("in the hole", bad(ok.0, 3 * MIB, ok.2)),
        ("past a region's end", bad(ok.0, ok.1, 5 * MIB - 8)),
        ("across two regions", bad(MIB - 0x800, ok.1, ok.2)),
        ("wrapping", bad(ok.0, ok.1, u64::MAX - 3)),
        ("misaligned desc", bad(0x1008, ok.1, ok.2)),
        ("misaligned avail", bad(ok.0, 0x2001, ok.2)),
        ("misaligned used", bad(ok.0, ok.1, 0x3002)),
    ] {
        assert!(
            matches!(err, VhostError::Ring { queue: 1, .. }),
            "{case}: {err}"
        );
        assert!(
            err.to_string().contains("outside guest memory"),
            "{case}: {err}"
        );
    }
    for size in [0u16, 3, 255] {
        let r = RingConfig {
            size,
            ..ring(ok.0, ok.1, ok.2)
        };
        let err = ring_addrs(&m, &r).unwrap_err();
        assert!(matches!(err, VhostError::QueueSize { .. }), "{size}: {err}");
    }
}

#[test]
fn memory_table_has_every_region() {
    let m = mem();
    let t = memory_regions(&m).unwrap();
    assert_eq!(t.len(), 3);
    for (r, gpa) in t.iter().zip([0, MIB, 4 * MIB]) {
        assert_eq!((r.guest_phys_addr, r.memory_size), (gpa, MIB));
        let host = m.get_host_address(GuestAddress(gpa)).unwrap() as u64;
        assert_eq!(r.userspace_addr, host);
    }
}

#[test]
fn a_host_without_vhost_net_is_a_clear_error() {
    let err = VhostNet::open(Path::new("/nonexistent/vhost-net")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/vhost-net") && msg.contains("vhost_net module"),
        "{msg}"
    );
    // Not a vhost device: the first ioctl fails and says which.
    let err = VhostNet::open(Path::new("/dev/null")).unwrap_err();
    assert!(err.to_string().contains("VHOST_SET_OWNER"), "{err}");
    let tap = Box::new(NoTap);
    let err =
        crate::virtio::net::Net::with_vhost(tap, [2, 0, 0, 0, 0, 1], Path::new("/nonexistent/x"))
            .err()
            .unwrap();
    assert!(matches!(err, VhostError::Open { .. }), "{err}");
}

struct NoTap;

impl crate::virtio::net::NetBackend for NoTap {
    fn read_frame(&mut self, _bufs: &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
    fn write_frame(&mut self, _bufs: &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<()> {
        Ok(())
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        -1
    }
    fn set_offload(&mut self, _features: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// An interrupt with an eventfd for some queues only.
struct Irq {
    queues: Vec<u16>,
}

impl VirtioInterrupt for Irq {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        Ok(())
    }
    fn irqfd(&self, kind: InterruptKind) -> Option<EventFd> {
        match kind {
            InterruptKind::Queue(q) if self.queues.contains(&q) => EventFd::new(EFD_NONBLOCK).ok(),
            _ => None,
        }
    }
}

fn queue(desc: u64) -> Queue {
    let mut q = Queue::new(256).unwrap();
    q.set_size(256);
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(0x8000), Some(0));
    q.set_used_ring_address(Some(0x9000), Some(0));
    q.set_ready(true);
    q
}

fn activate(path: &str, queues: &[Queue], irq: Irq) -> Result<(), String> {
    let mut mode = VhostMode::for_tests(Path::new(path), F_VERSION_1);
    let irq: Arc<dyn VirtioInterrupt> = Arc::new(irq);
    let events = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    mode.activate(mem(), &irq, queues, events, F_VERSION_1, -1)
}

#[test]
fn activation_checks_guest_rings_before_the_kernel_sees_anything() {
    // The path does not exist: every refusal below happens before vhost is opened.
    let path = "/nonexistent/vhost-net";
    let all = || Irq { queues: vec![0, 1] };
    let err = activate(path, &[queue(0x1000), queue(0x100_0000_0000)], all()).unwrap_err();
    assert!(
        err.contains("queue 1") && err.contains("outside guest memory"),
        "{err}"
    );
    let mut off = queue(0x1000);
    off.set_ready(false);
    let err = activate(path, &[off, queue(0x4000)], all()).unwrap_err();
    assert!(err.contains("queue 0 is not enabled"), "{err}");
    let err = activate(
        path,
        &[queue(0x1000), queue(0x4000)],
        Irq { queues: vec![0] },
    );
    assert!(err.unwrap_err().contains("queue 1 has no MSI-X vector"));
    // Good rings: now the kernel is asked, and its absence is the error.
    let err = activate(path, &[queue(0x1000), queue(0x4000)], all()).unwrap_err();
    assert!(err.contains("cannot open /nonexistent/vhost-net"), "{err}");
}
