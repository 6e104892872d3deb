//! What kind of KVM this host offers.

use std::path::Path;

/// The host's KVM, as far as thinvm can tell before opening a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKvm {
    /// Hardware virtualization (VT-x or AMD-V): unmodified guests run.
    Hardware,
    /// KVM's "Pagetable-based Virtual Machine": guest kernel code is emulated and an unmodified
    /// Linux kernel cannot boot (its emulator lacks instructions Linux needs).
    Pvm,
    /// No /dev/kvm at all.
    Absent,
}

/// Looks at /dev/kvm, the loaded modules and the CPU flags.
pub fn probe_host() -> HostKvm {
    if !Path::new("/dev/kvm").exists() {
        return HostKvm::Absent;
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return HostKvm::Pvm;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_hw {
        HostKvm::Hardware
    } else {
        // /dev/kvm without VT-x/AMD-V flags: some software KVM. Treat it as unable to boot Linux.
        HostKvm::Pvm
    }
}
