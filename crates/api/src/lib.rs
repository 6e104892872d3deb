//! thinvm's REST APIs.
//!
//! - [`ch`]: the per-VM API each VMM process serves on its own Unix socket, a subset of Cloud
//!   Hypervisor's `/api/v1` (the pinned version is in docs/api.md), over a [`ch::Controller`]
//!   trait that the VMM implements (this crate does not depend on `vmm`).
//! - [`daemon`]: the request and response types of thinvmd's API, name rules, and its OpenAPI
//!   document.
//! - [`unix`]: binding a Unix socket with a mode, a listener that checks the peer's credentials,
//!   and serving a router on it.
//! - [`client`]: a small HTTP/1 client over a Unix socket.
//! - [`net`]: MAC addresses and TAP names, checked alike by every API and the CLI.
//! - [`vsock`]: the guest CID rule, checked alike by every API.

pub mod ch;
pub mod client;
pub mod daemon;
mod error;
pub mod net;
pub mod unix;
pub mod vsock;

pub use error::ApiError;
