//! The per-VM API: a subset of Cloud Hypervisor's `/api/v1` (see docs/api.md for the pinned
//! version and what each call does in thinvm).

mod config;
mod resize;
mod router;
mod rules;
mod types;

pub use config::{parse_vm_config, ConfigError};
pub use resize::{check_balloon_fits, parse_resize};
pub use router::{router, Controller, VmAction};
pub use types::{
    BalloonConfig, ConsoleConfig, ConsoleMode, CpusConfig, DiskConfig, ImageType, MemoryConfig,
    NetConfig, PayloadConfig, VmConfig, VmCounters, VmInfo, VmResize, VmState, VmmPingResponse,
    VsockConfig,
};

/// The version of Cloud Hypervisor's OpenAPI document (`info.version`) this API follows.
pub const CH_API_VERSION: &str = "0.3.0";
/// The path prefix of every per-VM call.
pub const PREFIX: &str = "/api/v1";
