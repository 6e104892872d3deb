//! I/O engines under the formats.

pub mod aligned;
