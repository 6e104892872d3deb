//! The PCI bus of a real KVM VM, driven from the host side: configuration through port 0xCF8,
//! MSI-X routes through KVM_SET_GSI_ROUTING, a virtio-blk read served by the device worker.
//! The vCPUs never run, so this works on a PVM host too.

mod guest;
mod pci_support;

use std::time::{Duration, Instant};

use guest::{config, Asm, Captured};
use pci_support::{bar_read, bar_write, build_vm, cfg_read32, cfg_write, temp_disk};
use vm_memory::{Bytes, GuestAddress};
use vmm::{DiskConfig, Vm};

#[test]
fn devices_appear_in_slot_order_with_their_bars() {
    let disk = temp_disk("ids", |_| 0);
    let mut vm = build_vm();
    vm.pci()
        .add_disk(&DiskConfig {
            path: disk.clone(),
            format: storage::Format::Raw,
            read_only: true,
            serial: None,
        })
        .unwrap();
    vm.pci().add_rng().unwrap();
    assert_eq!(vm.pci().device_count(), 2);
    assert_eq!(cfg_read32(&vm, 0, 0), 0x0008_1b36, "host bridge");
    assert_eq!(cfg_read32(&vm, 1, 0), 0x1042_1af4, "virtio-blk");
    assert_eq!(cfg_read32(&vm, 2, 0), 0x1044_1af4, "virtio-rng");
    assert_eq!(cfg_read32(&vm, 3, 0), 0xffff_ffff);
    let bar1 = cfg_read32(&vm, 1, 0x10) & !0xf;
    let bar2 = cfg_read32(&vm, 2, 0x10) & !0xf;
    assert_eq!(bar1, 0xc000_0000);
    assert!(bar2 >= bar1 + 0x8000 && bar2 < 0xe000_0000);
    // ECAM sees the same.
    let mut b = [0u8; 4];
    assert!(vm.mmio_bus().read(0xe000_0000 + (2 << 15), &mut b));
    assert_eq!(u32::from_le_bytes(b), 0x1044_1af4);
    std::fs::remove_file(disk).unwrap();
}

#[test]
fn missing_disk_is_a_clear_error() {
    let mut vm = build_vm();
    let err = vm
        .pci()
        .add_disk(&DiskConfig {
            path: "/nonexistent/thinvm.raw".into(),
            format: storage::Format::Raw,
            read_only: false,
            serial: None,
        })
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/thinvm.raw"), "{err}");
}

#[test]
fn virtio_blk_read_through_the_bus_with_msix_routed_in_kvm() {
    let disk = temp_disk("read", |i| (i / 512) as u8 ^ 0x5a);
    let mut vm = build_vm();
    vm.pci()
        .add_disk(&DiskConfig {
            path: disk.clone(),
            format: storage::Format::Raw,
            read_only: false,
            serial: None,
        })
        .unwrap();
    let bar = u64::from(cfg_read32(&vm, 1, 0x10) & !0xf);
    // Memory decoding on, then MSI-X enabled with vector 0 programmed and unmasked: the route
    // goes to KVM (KVM_SET_GSI_ROUTING with the pin routes kept).
    cfg_write(&vm, 1, 0x04, &0x0006u16.to_le_bytes());
    let cap = find_msix(&vm, 1);
    cfg_write(&vm, 1, cap + 2, &0x8000u16.to_le_bytes());
    bar_write(&vm, bar, 0x4000, 0xfee0_0000, 4);
    bar_write(&vm, bar, 0x4008, 0x0000_0041, 4);
    bar_write(&vm, bar, 0x400c, 0, 4);
    // Driver: features, one queue of 16 at 0x10000 / 0x11000 / 0x12000.
    for s in [1u64, 3] {
        bar_write(&vm, bar, 0x14, s, 1);
    }
    bar_write(&vm, bar, 0x08, 1, 4);
    bar_write(&vm, bar, 0x0c, 1, 4);
    bar_write(&vm, bar, 0x14, 0xb, 1);
    assert_eq!(bar_read(&vm, bar, 0x14, 1), 0xb);
    bar_write(&vm, bar, 0x18, 16, 2);
    bar_write(&vm, bar, 0x20, 0x10000, 8);
    bar_write(&vm, bar, 0x28, 0x11000, 8);
    bar_write(&vm, bar, 0x30, 0x12000, 8);
    bar_write(&vm, bar, 0x1a, 0, 2);
    bar_write(&vm, bar, 0x1c, 1, 2);
    bar_write(&vm, bar, 0x14, 0xf, 1);
    assert_eq!(bar_read(&vm, bar, 0x14, 1), 0xf);
    // A read of sector 7 into 0x20000, status at 0x21000.
    let mem = vm.memory().clone();
    let w = |addr: u64, bytes: &[u8]| mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    w(0x13000, &[0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
    desc(&w, 0, 0x13000, 16, 1, 1);
    desc(&w, 1, 0x20000, 512, 3, 2);
    desc(&w, 2, 0x21000, 1, 2, 0);
    w(0x11004, &0u16.to_le_bytes());
    w(0x11002, &1u16.to_le_bytes());
    // The notification as the MMIO exit path delivers it (KVM's ioeventfd signals the same fd).
    bar_write(&vm, bar, 0x3000, 0, 2);
    let start = Instant::now();
    let used = || mem.read_obj::<u16>(GuestAddress(0x12002)).unwrap();
    while used() != 1 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(used(), 1, "the worker served the request");
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x21000)).unwrap(),
        0,
        "VIRTIO_BLK_S_OK"
    );
    let mut data = [0u8; 512];
    mem.read_slice(&mut data, GuestAddress(0x20000)).unwrap();
    assert!(data.iter().all(|&b| b == 7 ^ 0x5a));
    // The completion interrupt went out through the irqfd, its route accepted by KVM.
    let start = Instant::now();
    while vm.pci().msix_stats(0).unwrap().fired == 0 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = vm.pci().msix_stats(0).unwrap();
    assert_eq!(
        (stats.fired, stats.errors, stats.pended),
        (1, 0, 0),
        "{stats:?}"
    );
    drop(vm);
    std::fs::remove_file(disk).unwrap();
}

fn desc(w: &impl Fn(u64, &[u8]), i: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = Vec::new();
    d.extend_from_slice(&addr.to_le_bytes());
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    w(0x10000 + i * 16, &d);
}

fn find_msix(vm: &Vm, dev: u8) -> u8 {
    let mut ptr = (cfg_read32(vm, dev, 0x34) & 0xfc) as u8;
    for _ in 0..48 {
        let head = cfg_read32(vm, dev, ptr);
        if head & 0xff == 0x11 {
            return ptr;
        }
        ptr = ((head >> 8) & 0xfc) as u8;
        assert_ne!(ptr, 0, "no MSI-X capability");
    }
    panic!("capability list loops");
}

#[test]
fn dropping_the_vm_closes_its_disks() {
    let disk = temp_disk("close", |_| 0);
    let cfg = DiskConfig {
        path: disk.clone(),
        format: storage::Format::Raw,
        read_only: false,
        serial: None,
    };
    let mut vm = build_vm();
    vm.pci().add_disk(&cfg).unwrap();
    // The image is locked for writing: a second writer is refused while the VM exists.
    let mut other = build_vm();
    assert!(other.pci().add_disk(&cfg).is_err());
    drop(vm);
    other
        .pci()
        .add_disk(&cfg)
        .expect("the first VM released its disk");
    drop(other);
    std::fs::remove_file(disk).unwrap();
}

/// Guest code helpers beyond the shared assembler (flat 32-bit protected mode).
trait MoreAsm {
    fn raw(self, bytes: &[u8]) -> Self;
    /// mov dword [addr], v
    fn store32(self, addr: u32, v: u32) -> Self;
    /// mov word [addr], v
    fn store16(self, addr: u32, v: u16) -> Self;
    /// mov byte [addr], v
    fn store8(self, addr: u32, v: u8) -> Self;
    /// Configuration write of a dword through ports 0xCF8/0xCFC.
    fn pci_write32(self, dev: u8, reg: u8, v: u32) -> Self;
    /// Spins until the byte at `addr` equals `v`.
    fn wait_byte(self, addr: u32, v: u8) -> Self;
}

impl MoreAsm for Asm {
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn store32(self, addr: u32, v: u32) -> Self {
        let mut b = vec![0xc7, 0x05];
        b.extend(addr.to_le_bytes());
        b.extend(v.to_le_bytes());
        self.raw(&b)
    }
    fn store16(self, addr: u32, v: u16) -> Self {
        let mut b = vec![0x66, 0xc7, 0x05];
        b.extend(addr.to_le_bytes());
        b.extend(v.to_le_bytes());
        self.raw(&b)
    }
    fn store8(self, addr: u32, v: u8) -> Self {
        let mut b = vec![0xc6, 0x05];
        b.extend(addr.to_le_bytes());
        b.push(v);
        self.raw(&b)
    }
    fn pci_write32(self, dev: u8, reg: u8, v: u32) -> Self {
        let addr = 0x8000_0000u32 | u32::from(dev) << 11 | u32::from(reg);
        let mut b = vec![0x66, 0xba, 0xf8, 0x0c, 0xb8]; // mov dx, 0xcf8; mov eax, addr
        b.extend(addr.to_le_bytes());
        b.extend([0xef, 0x66, 0xba, 0xfc, 0x0c, 0xb8]); // out dx, eax; mov dx, 0xcfc; mov eax, v
        b.extend(v.to_le_bytes());
        b.push(0xef); // out dx, eax
        self.raw(&b)
    }
    fn wait_byte(self, addr: u32, v: u8) -> Self {
        let top = self.here();
        let s = self.load_al(addr).raw(&[0x3c, v]); // cmp al, v
        let rel = top as isize - (s.here() as isize + 2);
        s.raw(&[0x75, rel as i8 as u8]) // jne top
    }
}

/// Runs a VM to its end, with a watchdog so a broken test fails instead of hanging.
fn run_to_end(vm: &mut Vm) -> vmm::ExitReason {
    vm.start().expect("start vCPUs");
    let exit = vm.exit_signal().clone();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while exit.get().is_none() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        exit.set(vmm::ExitReason::Internal(
            "test watchdog: 60 s passed".into(),
        ));
    });
    let reason = vm.wait();
    watchdog.join().unwrap();
    reason
}

/// A hand-made guest drives virtio-blk itself (config ports, BAR writes, the notify doorbell
/// that KVM turns into an ioeventfd signal) with a hostile chain first and good ones after:
/// the bad request fails with IOERR, the good read and write are served, the guest powers off,
/// and the device's counters (`_disk0`) moved by exactly what the good requests carried.
#[test]
fn guest_driver_with_a_hostile_chain() {
    const BAR: u32 = 0xc000_0000;
    let disk = temp_disk("guest", |i| (i / 512) as u8 ^ 0xa5);
    let code = Asm::default()
        .pci_write32(1, 0x04, 0x0000_0006)
        .store8(BAR + 0x14, 1)
        .store8(BAR + 0x14, 3)
        .store32(BAR + 0x08, 1)
        .store32(BAR + 0x0c, 1)
        .store8(BAR + 0x14, 0xb)
        .store16(BAR + 0x18, 16)
        .store32(BAR + 0x20, 0x10000)
        .store32(BAR + 0x24, 0)
        .store32(BAR + 0x28, 0x11000)
        .store32(BAR + 0x2c, 0)
        .store32(BAR + 0x30, 0x12000)
        .store32(BAR + 0x34, 0)
        .store16(BAR + 0x1c, 1)
        .store8(BAR + 0x14, 0xf)
        .store16(BAR + 0x3000, 0)
        .wait_byte(0x12002, 3)
        .acpi_poweroff();
    let out = Captured::default();
    let mut vm = Vm::new(&config(code, 1), Box::new(out)).expect("build VM");
    vm.pci()
        .add_disk(&DiskConfig {
            path: disk.clone(),
            format: storage::Format::Raw,
            read_only: false,
            serial: None,
        })
        .unwrap();
    let mem = vm.memory().clone();
    let w = |addr: u64, bytes: &[u8]| mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    // Request 1 (head 0): its data buffer lies past the end of the 32 MiB of RAM.
    w(0x13000, &[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    desc(&w, 0, 0x13000, 16, 1, 1);
    desc(&w, 1, 0x7000_0000, 512, 3, 2);
    desc(&w, 2, 0x21000, 1, 2, 0);
    // Request 2 (head 3): a good read of sector 5.
    w(0x13100, &[0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
    desc(&w, 3, 0x13100, 16, 1, 4);
    desc(&w, 4, 0x20000, 512, 3, 5);
    desc(&w, 5, 0x21001, 1, 2, 0);
    // Request 3 (head 6): a write of 1024 bytes of 0x3c at sector 10.
    w(0x13200, &[1, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0]);
    w(0x22000, &[0x3c; 1024]);
    desc(&w, 6, 0x13200, 16, 1, 7);
    desc(&w, 7, 0x22000, 1024, 1, 8);
    desc(&w, 8, 0x21002, 1, 2, 0);
    w(0x21000, &[0xff, 0xff, 0xff]);
    w(0x11004, &0u16.to_le_bytes());
    w(0x11006, &3u16.to_le_bytes());
    w(0x11008, &6u16.to_le_bytes());
    w(0x11002, &3u16.to_le_bytes());
    let counters = vm.device_counters();
    assert_eq!(run_to_end(&mut vm), vmm::ExitReason::PowerOff);
    let mut status = [0u8; 3];
    mem.read_slice(&mut status, GuestAddress(0x21000)).unwrap();
    assert_eq!(
        status,
        [1, 0, 0],
        "IOERR for the hostile request, OK for the good ones"
    );
    let groups = counters.groups();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].0, "_disk0");
    let mut got = groups[0].1.clone();
    got.sort();
    assert_eq!(
        got,
        [
            ("read_bytes", 512),
            ("read_ops", 1),
            ("write_bytes", 1024),
            ("write_ops", 1)
        ]
    );
    let on_disk = std::fs::read(&disk).unwrap();
    assert!(on_disk[10 * 512..12 * 512].iter().all(|&b| b == 0x3c));
    let mut data = [0u8; 512];
    mem.read_slice(&mut data, GuestAddress(0x20000)).unwrap();
    assert!(data.iter().all(|&b| b == 5 ^ 0xa5));
    drop(vm);
    std::fs::remove_file(disk).unwrap();
}
