//! thinvmd: keeps VM definitions and states in SQLite, runs one thinvm VMM process per VM,
//! watches and restarts them, adopts them again after its own restart, and serves a REST API on
//! a Unix socket.

pub mod confine;
pub mod db;
pub mod http;
pub mod lifecycle;
mod macs;
pub mod metrics;
pub mod process;
pub mod serve;
pub mod supervisor;
mod vmm_config;

pub use serve::{run, ServeOptions};
pub use supervisor::{Config, Daemon};
