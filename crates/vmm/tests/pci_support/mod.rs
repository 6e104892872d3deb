//! Host-side access to a KVM VM's PCI bus for the PCI tests: configuration through ports
//! 0xCF8/0xCFC, BAR reads and writes on the MMIO bus, a VM whose vCPUs never run, a scratch disk.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

use vmm::Vm;

use super::guest::{config, Asm, Captured};

pub fn temp_disk(tag: &str, fill: impl Fn(usize) -> u8) -> PathBuf {
    let path = std::env::temp_dir().join(format!("thinvm-pci-{tag}-{}.raw", std::process::id()));
    let data: Vec<u8> = (0..64 * 1024).map(fill).collect();
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    path
}

pub fn cfg_read32(vm: &Vm, dev: u8, reg: u8) -> u32 {
    let addr = 0x8000_0000u32 | u32::from(dev) << 11 | u32::from(reg);
    assert!(vm.io_bus().write(0xcf8, &addr.to_le_bytes()));
    let mut b = [0u8; 4];
    assert!(vm.io_bus().read(0xcfc, &mut b));
    u32::from_le_bytes(b)
}

pub fn cfg_write(vm: &Vm, dev: u8, reg: u8, data: &[u8]) {
    let addr = 0x8000_0000u32 | u32::from(dev) << 11 | u32::from(reg & !3);
    assert!(vm.io_bus().write(0xcf8, &addr.to_le_bytes()));
    assert!(vm.io_bus().write(0xcfc + u64::from(reg & 3), data));
}

pub fn bar_write(vm: &Vm, bar: u64, off: u64, v: u64, len: usize) {
    assert!(
        vm.mmio_bus().write(bar + off, &v.to_le_bytes()[..len]),
        "{off:#x}"
    );
}

pub fn bar_read(vm: &Vm, bar: u64, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    assert!(vm.mmio_bus().read(bar + off, &mut b[..len]));
    u64::from_le_bytes(b)
}

pub fn build_vm() -> Vm {
    Vm::new(&config(Asm::default(), 1), Box::new(Captured::default())).expect("build VM")
}
