//! The nested testbed: real Linux guests for thinvm on hosts whose /dev/kvm cannot boot Linux.
//!
//! An outer QEMU (TCG, `-cpu max` with SVM) boots Debian's cloud kernel with kvm-amd; its
//! initramfs carries the VMM under test, the guest kernel and a guest initramfs, and runs
//! scenario scripts with begin/end markers on the console.

pub mod assets;
pub mod cache;
pub mod cpio;
pub mod elf;
pub mod images;
pub mod kmod;
pub mod ldd;
pub mod outer;
pub mod vmlinux;
