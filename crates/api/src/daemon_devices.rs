//! The vsock device and the balloon of a VM definition.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::vsock::{valid_cid, CID_RANGE};

/// A virtio-vsock device. The client gives only the guest's CID: the daemon places the host
/// side's Unix socket in the VM's folder (`vms/NAME/vsock.sock`), never where a client says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSpec {
    pub cid: u64,
}

/// A virtio-balloon device (as the per-VM API's `balloon`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonSpec {
    /// The balloon's initial size in bytes, at most the VM's memory.
    pub size: u64,
    #[serde(default)]
    pub deflate_on_oom: bool,
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// The file name of a VM's vsock socket in its folder.
pub const VSOCK_SOCKET: &str = "vsock.sock";

/// Checks the vsock CID and the balloon's size against `memory`.
pub(crate) fn validate(
    vsock: Option<&VsockSpec>,
    balloon: Option<&BalloonSpec>,
    memory: u64,
) -> Result<(), String> {
    if let Some(v) = vsock {
        if !valid_cid(v.cid) {
            let (lo, hi) = CID_RANGE;
            return Err(format!(
                "vsock.cid: {} is reserved or too large: use {lo}..={hi}",
                v.cid
            ));
        }
    }
    if let Some(b) = balloon {
        if b.size > memory {
            return Err(format!(
                "balloon.size: {} bytes is larger than the VM's memory ({memory} bytes)",
                b.size
            ));
        }
    }
    Ok(())
}

/// The OpenAPI schemas of `vsock` and `balloon` in `VmSpec`.
pub(crate) fn openapi_properties() -> (Value, Value) {
    let (lo, hi) = CID_RANGE;
    (
        json!({"type": "object", "required": ["cid"], "additionalProperties": false,
            "description": "the host side's Unix socket is placed by the daemon at vms/NAME/vsock.sock (reported as vsock_socket)",
            "properties": {"cid": {"type": "integer", "minimum": lo, "maximum": hi}}}),
        json!({"type": "object", "required": ["size"], "additionalProperties": false, "properties": {
            "size": {"type": "integer", "minimum": 0, "description": "bytes, at most the VM's memory"},
            "deflate_on_oom": {"type": "boolean"},
            "free_page_reporting": {"type": "boolean"}}}),
    )
}
