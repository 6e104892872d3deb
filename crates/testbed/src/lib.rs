//! The nested testbed: real Linux guests for thinvm on hosts whose /dev/kvm cannot boot Linux.
//!
//! An outer QEMU (TCG, `-cpu max` with SVM) boots Debian's cloud kernel with kvm-amd; its
//! initramfs carries the VMM under test, the guest kernel and a guest initramfs, and runs
//! scenario scripts with begin/end markers on the console. See [`Testbed`] and the crate's
//! README.md (how it works, the xtask commands, the scenario script contract).

pub mod assets;
pub mod cache;
pub mod cpio;
pub mod elf;
pub mod images;
pub mod kmod;
pub mod ldd;
pub mod markers;
pub mod outer;
pub mod qemu;
pub mod stall;
mod testbed;
pub mod vmlinux;

pub use assets::Assets;
pub use images::{GuestSpec, Script};
pub use markers::Status;
pub use outer::OuterSpec;
pub use qemu::OuterOptions;
pub use testbed::{
    interactive_script, shell_quote, Scenario, ScenarioResult, Testbed, TestbedConfig, TestbedError,
};
