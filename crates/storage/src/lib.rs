//! Disk images for thinvm: one block-backend interface ([`BlockBackend`]) over raw, qcow2
//! (read-write, backing chains, overlays), VHD and VHDX (read-only) images; creation, checks,
//! conversion and commit for `thinvm image`. Knows neither guest memory nor KVM.

pub mod backend;
pub mod bench;
pub mod chain;
pub mod file;
pub mod formats;
pub mod fuzz_api;
pub mod io;
pub mod memfile;
pub mod ops;
pub mod recording;

pub use backend::{chain_extent, BlockBackend, BlockError, Extent, ExtentKind, HostRange};
pub use chain::{open_image, probe_format, Format, OpenError, OpenOptions};

/// An error with its chain of causes, "outer: inner: innermost" (for logs without anyhow).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
