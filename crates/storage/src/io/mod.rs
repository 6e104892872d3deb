//! I/O engines under the formats, and the asynchronous disk queue on top of them.

pub mod aligned;
pub mod buf;
pub mod disk;
pub mod engine;
pub mod uring;
