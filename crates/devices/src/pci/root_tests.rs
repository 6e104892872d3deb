use std::sync::{Arc, Mutex};

use super::*;
use crate::bus::{Bus, BusDevice};

/// A device with one 64-bit BAR that records what reaches it.
struct Dummy {
    config: PciConfig,
    last_write: Option<(usize, u64, Vec<u8>)>,
}

impl Dummy {
    fn new(addr: u64) -> Self {
        let mut config = PciConfig::new(PciIds {
            vendor: 0x1af4,
            device: 0x1044,
            revision: 1,
            class: 0xff_00_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        let info = BarInfo {
            size: 0x4000,
            kind: BarKind::Mem64,
        };
        config.add_bar(0, info, addr).unwrap();
        Dummy {
            config,
            last_write: None,
        }
    }
}

impl PciDevice for Dummy {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(bar as u8 + offset as u8);
    }
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.last_write = Some((bar, offset, data.to_vec()));
    }
}

fn cf8(dev: u8, reg: u8) -> u32 {
    0x8000_0000 | u32::from(dev) << 11 | u32::from(reg)
}

fn setup() -> (PciConfigIo, PciConfigMmio, Bus, Arc<Mutex<Dummy>>) {
    let mmio = Bus::new();
    let root = Arc::new(Mutex::new(PciRoot::new(mmio.clone())));
    let dummy = Arc::new(Mutex::new(Dummy::new(0xc000_0000)));
    let slot = root.lock().unwrap().add_device(dummy.clone()).unwrap();
    assert_eq!(slot, 1, "slot 0 is the host bridge");
    (
        PciConfigIo::new(root.clone()),
        PciConfigMmio::new(root),
        mmio,
        dummy,
    )
}

fn io_read32(io: &mut PciConfigIo, addr: u32) -> u32 {
    io.write(0, &addr.to_le_bytes());
    let mut b = [0; 4];
    io.read(4, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn host_bridge_and_device_through_ports() {
    let (mut io, _, _, _) = setup();
    assert_eq!(io_read32(&mut io, cf8(0, 0)), 0x0008_1b36);
    assert_eq!(io_read32(&mut io, cf8(0, 8)) >> 8, 0x06_00_00);
    assert_eq!(io_read32(&mut io, cf8(1, 0)), 0x1044_1af4);
    assert_eq!(io_read32(&mut io, cf8(2, 0)), 0xffff_ffff, "empty slot");
    // Function 1, bus 1 and a disabled address read all ones.
    assert_eq!(io_read32(&mut io, cf8(1, 0) | 1 << 8), 0xffff_ffff);
    assert_eq!(io_read32(&mut io, cf8(1, 0) | 1 << 16), 0xffff_ffff);
    assert_eq!(io_read32(&mut io, cf8(1, 0) & !0x8000_0000), 0xffff_ffff);
    // Sub-dword data access: the device ID is at 0xCFE.
    io.write(0, &cf8(1, 0).to_le_bytes());
    let mut b = [0; 2];
    io.read(6, &mut b);
    assert_eq!(u16::from_le_bytes(b), 0x1044);
}

#[test]
fn address_register_reads_back_as_linux_probes_it() {
    let (mut io, _, _, _) = setup();
    io.write(3, &[0x01]);
    io.write(0, &0x8000_0000u32.to_le_bytes());
    let mut b = [0; 4];
    io.read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
    // Straddling and oversized accesses are ignored.
    io.write(2, &[1, 2, 3, 4]);
    io.read(3, &mut b);
    assert_eq!(b, [0xff; 4]);
}

#[test]
fn ecam_reaches_the_same_registers() {
    let (_, mut ecam, _, _) = setup();
    let mut b = [0; 4];
    ecam.read(1 << 15, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x1044_1af4);
    ecam.read(1 << 20, &mut b);
    assert_eq!(b, [0xff; 4], "bus 1 does not exist");
    ecam.read((1 << 15) + 0xffe, &mut b);
    assert_eq!(b, [0xff; 4], "straddles a function's space");
    ecam.read((1 << 15) + 0x100, &mut b);
    assert_eq!(b, [0; 4], "extended space");
}

#[test]
fn bar_is_mapped_while_decoding_and_follows_reprogramming() {
    let (mut io, _, mmio, dummy) = setup();
    let mut b = [0u8; 1];
    assert!(!mmio.read(0xc000_0010, &mut b), "decode off: not mapped");
    io.write(0, &cf8(1, 4).to_le_bytes());
    io.write(4, &0x0006u16.to_le_bytes());
    assert!(mmio.read(0xc000_0010, &mut b));
    assert_eq!(b[0], 0x10);
    assert!(mmio.write(0xc000_0020, &[9]));
    assert_eq!(dummy.lock().unwrap().last_write, Some((0, 0x20, vec![9])));
    // The guest moves the BAR: the mapping moves with it.
    io.write(0, &cf8(1, 0x10).to_le_bytes());
    io.write(4, &0xd000_0000u32.to_le_bytes());
    assert!(!mmio.read(0xc000_0010, &mut b));
    assert!(mmio.read(0xd000_0010, &mut b));
    // Sizing while decoding is on maps nothing at all-ones addresses and does not panic.
    io.write(4, &0xffff_ffffu32.to_le_bytes());
    io.write(0, &cf8(1, 0x14).to_le_bytes());
    io.write(4, &0xffff_ffffu32.to_le_bytes());
    // Decode off: unmapped.
    io.write(0, &cf8(1, 4).to_le_bytes());
    io.write(4, &0u16.to_le_bytes());
    assert!(!mmio.read(0xd000_0010, &mut b));
}

#[test]
fn full_bus_is_refused() {
    let mut root = PciRoot::new(Bus::new());
    for _ in 1..32 {
        root.add_device(Arc::new(Mutex::new(HostBridge::new())))
            .unwrap();
    }
    assert!(matches!(
        root.add_device(Arc::new(Mutex::new(HostBridge::new()))),
        Err(PciError::NoSlot)
    ));
}
