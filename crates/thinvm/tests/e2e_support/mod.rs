//! Shared by the end-to-end tests in the nested testbed: the opt-in switch, the guest's virtio
//! modules, and reading `KEY=value` lines from a scenario's log.

#![allow(dead_code)]

/// The virtio PCI transport's modules (Debian's cloud kernel builds them as modules), in load
/// order.
pub const VIRTIO_PCI_MODULES: [&str; 5] = [
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
];

/// The virtio PCI modules followed by `devices`' drivers.
pub fn guest_modules(devices: &[&str]) -> Vec<String> {
    VIRTIO_PCI_MODULES
        .iter()
        .chain(devices)
        .map(|m| m.to_string())
        .collect()
}

/// True when `THINVM_E2E` is set; otherwise says the test is skipped.
pub fn enabled() -> bool {
    let on = std::env::var_os("THINVM_E2E").is_some();
    if !on {
        eprintln!("skipped: set THINVM_E2E=1 to boot the nested testbed");
    }
    on
}

/// The value of the first `KEY=value` line of `log`.
pub fn value<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    log.lines()
        .find_map(|l| l.trim_end().strip_prefix(key)?.strip_prefix('='))
}
