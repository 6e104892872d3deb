use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use crate::pci::{MsiMessage, PciDevice};
use crate::virtio::testmem::*;
use crate::virtio::{
    block::Block, F_VERSION_1, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET,
};
use crate::virtio::{InterruptKind, VirtioDevice, VirtioInterrupt};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

#[derive(Default)]
struct Recorder {
    fired: Mutex<Vec<u16>>,
}

impl MsiSink for Recorder {
    fn set_route(&self, _vector: u16, _msg: MsiMessage) -> std::io::Result<()> {
        Ok(())
    }
    fn fire(&self, vector: u16) -> std::io::Result<()> {
        self.fired.lock().unwrap().push(vector);
        Ok(())
    }
}

const BAR: u64 = 0xc000_0000;

struct Driver {
    dev: VirtioPciDevice,
    ring: TestRing,
    disk: MemDisk,
    msi: Arc<Recorder>,
}

impl Driver {
    fn new() -> Self {
        let ring = TestRing::new(16);
        let disk = MemDisk::new(64 * 1024, false);
        let msi = Arc::new(Recorder::default());
        let block = Box::new(Block::new(Box::new(disk.clone()), "serial"));
        let dev = VirtioPciDevice::new(block, ring.mem.clone(), msi.clone(), BAR).unwrap();
        Driver {
            dev,
            ring,
            disk,
            msi,
        }
    }
    fn w(&mut self, off: u64, v: u64, len: usize) {
        self.dev.write_bar(0, off, &v.to_le_bytes()[..len]);
    }
    fn r(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_bar(0, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    fn status(&mut self) -> u8 {
        self.r(0x14, 1) as u8
    }
    fn negotiate(&mut self, driver_features: u64) {
        self.w(0x14, 1, 1);
        self.w(0x14, 3, 1);
        for sel in 0..2u64 {
            self.w(0x08, sel, 4);
            self.w(0x0c, (driver_features >> (32 * sel)) & 0xffff_ffff, 4);
        }
        self.w(0x14, 0xb, 1);
    }
    fn setup_queue(&mut self) {
        let (desc, avail, used) = TestRing::addresses();
        self.w(0x16, 0, 2);
        self.w(0x18, 16, 2);
        self.w(0x20, desc, 8);
        self.w(0x28, avail, 4);
        self.w(0x2c, 0, 4);
        self.w(0x30, used, 4);
        self.w(0x34, 0, 4);
        self.w(0x1a, 0, 2);
        self.w(0x1c, 1, 2);
    }
    fn enable_msix(&mut self) {
        let cap = self.dev.config().find_capabilities(0x11)[0];
        self.dev.write_config(cap + 2, &0x8000u16.to_le_bytes());
        // Vector 0: a message and unmasked.
        self.w(0x4000, 0xfee0_0000, 4);
        self.w(0x4008, 0x31, 4);
        self.w(0x400c, 0, 4);
    }
    /// A one-sector read request at descriptors 0..3, made available.
    fn queue_read(&mut self) {
        let r = &self.ring;
        r.write(0x10000, 0u32);
        r.write(0x10008, 2u64);
        r.desc(0, 0x10000, 16, NEXT, 1);
        r.desc(1, 0x20000, 512, WRITE | NEXT, 2);
        r.desc(2, 0x30000, 1, WRITE, 0);
        self.ring.push(0);
    }
    fn wait_used(&self, n: u16) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.ring.used_idx() == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

#[test]
fn capabilities_describe_the_bar_layout() {
    let d = Driver::new();
    let c = d.dev.config();
    assert_eq!(c.u16_at(0), 0x1af4);
    assert_eq!(c.u16_at(2), 0x1042);
    assert_eq!(c.bar_address(0), Some(BAR));
    let vendor = c.find_capabilities(0x09);
    assert_eq!(vendor.len(), 4);
    let mut seen = Vec::new();
    for off in vendor {
        let mut b = [0u8; 1];
        c.read(off + 3, &mut b);
        seen.push(b[0]);
        if b[0] == 2 {
            assert_eq!(c.u32_at(off + 8), 0x3000, "notify offset");
            assert_eq!(c.u32_at(off + 16), NOTIFY_OFF_MULTIPLIER);
        }
    }
    assert_eq!(seen, vec![1, 2, 3, 4]);
    assert_eq!(c.find_capabilities(0x11).len(), 1);
    assert_eq!(notify_address(BAR, 0), BAR + 0x3000);
}

#[test]
fn full_driver_sequence_serves_a_read_and_interrupts() {
    let mut d = Driver::new();
    d.enable_msix();
    d.negotiate(F_VERSION_1);
    assert_eq!(d.status() & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
    d.setup_queue();
    d.queue_read();
    // Before DRIVER_OK a notification is refused and nothing is served.
    d.w(0x3000, 0, 2);
    assert_eq!(d.dev.stats().refused_notifies, 1);
    assert_eq!(d.ring.used_idx(), 0);
    d.w(0x14, 0xf, 1);
    assert_eq!(d.status(), 0xf);
    d.w(0x3000, 0, 2);
    assert!(d.wait_used(1), "the request was served");
    assert_eq!(d.ring.used(0), (0, 513));
    assert!(d.ring.read_bytes(0x20000, 512).iter().all(|&b| b == 2));
    let start = Instant::now();
    while d.msi.fired.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*d.msi.fired.lock().unwrap(), vec![0]);
    // Reset: status 0, the queue registers back to their defaults.
    d.w(0x14, 0, 1);
    assert_eq!(d.status(), 0);
    assert_eq!(d.r(0x1c, 2), 0);
    assert_eq!(d.r(0x1a, 2), u64::from(NO_VECTOR));
    drop(d.disk);
}

#[test]
fn bad_negotiation_is_refused() {
    let mut d = Driver::new();
    // Without VERSION_1.
    d.negotiate(0);
    assert_eq!(d.status() & STATUS_FEATURES_OK, 0);
    // DRIVER_OK without FEATURES_OK.
    d.w(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | 4), 1);
    assert_eq!(d.status() & 4, 0);
    d.w(0x14, 0, 1);
    // A feature the device did not offer.
    d.negotiate(F_VERSION_1 | 1 << 40);
    assert_eq!(d.status() & STATUS_FEATURES_OK, 0);
    assert_eq!(d.dev.common().stats().refused_features, 2);
}

#[test]
fn queue_registers_are_frozen_after_driver_ok() {
    let mut d = Driver::new();
    d.negotiate(F_VERSION_1);
    d.setup_queue();
    d.w(0x14, 0xf, 1);
    let before = d.dev.common().stats().refused_writes;
    d.w(0x20, 0x9000, 8);
    d.w(0x18, 4, 2);
    assert_eq!(d.r(0x20, 8), TestRing::addresses().0);
    assert_eq!(d.r(0x18, 2), 16);
    assert_eq!(d.dev.common().stats().refused_writes, before + 2);
    // Features are frozen too.
    d.w(0x08, 0, 4);
    d.w(0x0c, 0, 4);
    assert_eq!(d.r(0x0c, 4), 0);
    assert_eq!(d.dev.common().driver_features(), F_VERSION_1);
}

#[test]
fn rings_outside_memory_make_the_device_need_reset() {
    let mut d = Driver::new();
    d.negotiate(F_VERSION_1);
    d.setup_queue();
    // Only valid before enabling, so redo the queue with a used ring past the end of memory.
    d.w(0x14, 0, 1);
    d.negotiate(F_VERSION_1);
    d.w(0x18, 16, 2);
    d.w(0x30, MEM_SIZE - 8, 8);
    d.w(0x1c, 1, 2);
    d.w(0x14, 0xf, 1);
    assert_eq!(d.status() & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
    assert_eq!(d.dev.stats().failed_activations, 1);
    d.w(0x3000, 0, 2);
    assert_eq!(d.dev.stats().refused_notifies, 1);
}

#[test]
fn hostile_bar_accesses_do_not_panic() {
    let mut d = Driver::new();
    for off in [
        0x37u64,
        0x38,
        0x1003,
        0x2fff,
        0x3ffc,
        0x7fff,
        0x8000,
        u64::MAX - 2,
    ] {
        for len in [1usize, 2, 4, 8] {
            let mut b = vec![0u8; len];
            d.dev.read_bar(0, off, &mut b);
            d.dev.write_bar(0, off, &b);
            d.dev.read_bar(3, off, &mut b);
            d.dev.write_bar(3, off, &b);
        }
    }
    // Queue select beyond the queue count: reads zero, writes refused.
    d.w(0x16, 7, 2);
    assert_eq!(d.r(0x18, 2), 0);
    d.w(0x18, 16, 2);
    assert_eq!(d.r(0x12, 2), 1);
}

/// A device that keeps the transport's interrupt to announce configuration changes.
struct ConfigDev(Arc<Mutex<Option<Arc<dyn VirtioInterrupt>>>>);

impl VirtioDevice for ConfigDev {
    fn device_type(&self) -> u32 {
        99
    }
    fn name(&self) -> &'static str {
        "config-dev"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8]
    }
    fn features(&self) -> u64 {
        F_VERSION_1
    }
    fn set_config_interrupt(&mut self, interrupt: Arc<dyn VirtioInterrupt>) {
        *self.0.lock().unwrap() = Some(interrupt);
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _interrupt: Arc<dyn VirtioInterrupt>,
        _queues: Vec<Queue>,
        _events: Vec<EventFd>,
    ) -> Result<(), crate::virtio::ActivateError> {
        Ok(())
    }
    fn reset(&mut self) {}
}

#[test]
fn config_changes_bump_the_generation_and_raise_the_config_vector() {
    let ring = TestRing::new(8);
    let msi = Arc::new(Recorder::default());
    let slot = Arc::new(Mutex::new(None));
    let dev = Box::new(ConfigDev(slot.clone()));
    let mut dev = VirtioPciDevice::new(dev, ring.mem.clone(), msi.clone(), BAR).unwrap();
    let irq = slot
        .lock()
        .unwrap()
        .clone()
        .expect("the transport gave its interrupt");
    let read = |d: &mut VirtioPciDevice, off: u64, len: usize| {
        let mut b = [0u8; 8];
        d.read_bar(0, off, &mut b[..len]);
        u64::from_le_bytes(b)
    };
    assert_eq!(read(&mut dev, 0x15, 1), 0);
    // Before the driver set up MSI-X: the generation and the ISR still change.
    irq.trigger(InterruptKind::Config).unwrap();
    assert_eq!(read(&mut dev, 0x15, 1), 1);
    assert_eq!(
        read(&mut dev, 0x1000, 1),
        2,
        "ISR config bit, cleared by the read"
    );
    assert!(msi.fired.lock().unwrap().is_empty());
    // With MSI-X on and the config vector set to 1, the vector fires.
    let cap = dev.config().find_capabilities(0x11)[0];
    dev.write_config(cap + 2, &0x8000u16.to_le_bytes());
    dev.write_bar(0, 0x4010, &0xfee0_0000u32.to_le_bytes());
    dev.write_bar(0, 0x4018, &0x32u32.to_le_bytes());
    dev.write_bar(0, 0x401c, &0u32.to_le_bytes());
    dev.write_bar(0, 0x10, &1u16.to_le_bytes());
    irq.trigger(InterruptKind::Config).unwrap();
    irq.trigger(InterruptKind::Queue(0)).unwrap();
    assert_eq!(
        read(&mut dev, 0x15, 1),
        2,
        "queue interrupts leave it alone"
    );
    assert_eq!(*msi.fired.lock().unwrap(), vec![1]);
}

/// A sink with an eventfd per vector (the VMM's irqfds).
struct IrqfdSink(Vec<EventFd>);

impl MsiSink for IrqfdSink {
    fn set_route(&self, _vector: u16, _msg: MsiMessage) -> std::io::Result<()> {
        Ok(())
    }
    fn fire(&self, _vector: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn irqfd(&self, vector: u16) -> Option<EventFd> {
        self.0.get(usize::from(vector))?.try_clone().ok()
    }
}

#[test]
fn a_queues_irqfd_is_the_one_of_the_vector_the_driver_chose() {
    let ring = TestRing::new(8);
    let sink = Arc::new(IrqfdSink(
        (0..2).map(|_| EventFd::new(0).unwrap()).collect(),
    ));
    let slot = Arc::new(Mutex::new(None));
    let dev = Box::new(ConfigDev(slot.clone()));
    let mut dev = VirtioPciDevice::new(dev, ring.mem.clone(), sink.clone(), BAR).unwrap();
    let irq = slot.lock().unwrap().clone().unwrap();
    // No vector chosen yet (NO_VECTOR after reset), and no such queue.
    assert!(irq.irqfd(InterruptKind::Queue(0)).is_none());
    assert!(irq.irqfd(InterruptKind::Queue(3)).is_none());
    dev.write_bar(0, 0x16, &0u16.to_le_bytes()); // queue_select 0
    dev.write_bar(0, 0x1a, &1u16.to_le_bytes()); // queue_msix_vector 1
    let fd = irq
        .irqfd(InterruptKind::Queue(0))
        .expect("vector 1's eventfd");
    fd.write(1).unwrap();
    assert_eq!(sink.0[1].read().unwrap(), 1);
    dev.write_bar(0, 0x1a, &NO_VECTOR.to_le_bytes());
    assert!(irq.irqfd(InterruptKind::Queue(0)).is_none());
}

#[path = "pci_reset_tests.rs"]
mod reset;
