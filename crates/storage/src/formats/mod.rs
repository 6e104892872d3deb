//! Disk image formats.

pub mod qcow2;
pub mod raw;
