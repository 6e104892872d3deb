//! Disk image formats.

pub mod qcow2;
pub mod raw;
pub mod vhd;
pub mod vhdx;
