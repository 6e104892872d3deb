//! thinvmd's API: request and response types, the name rule, the route table and the OpenAPI
//! document built from it (the daemon's tests check every route in the table is served).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::net::{check_tap_name, parse_mac};

#[path = "daemon_devices.rs"]
mod devices;
pub use devices::{BalloonSpec, VsockSpec, VSOCK_SOCKET};

/// Longest VM name.
pub const MAX_NAME: usize = 63;
/// Smallest and largest guest memory the daemon accepts.
pub const MEMORY_RANGE: (u64, u64) = (2 << 20, 1 << 40);

/// Checks a VM name against `^[a-z0-9][a-z0-9._-]{0,62}$`.
pub fn check_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'));
    if first_ok && rest_ok && b.len() <= MAX_NAME {
        Ok(())
    } else {
        Err(format!(
            "invalid VM name {name:?}: use 1 to 63 characters of a-z, 0-9, '.', '_', '-', \
             starting with a letter or digit"
        ))
    }
}

/// What the daemon does when a VM's VMM ends without a user's stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    #[default]
    Never,
    /// Restart after a crash, panic, triple fault or SIGKILL.
    OnFailure,
    /// Restart also after the guest powered itself off.
    Always,
}

/// A VM's state in the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Defined,
    Starting,
    Running,
    Paused,
    Stopping,
    Stopped,
    Crashed,
}

impl State {
    /// Every state, in lifecycle order.
    pub const ALL: [State; 7] = [
        State::Defined,
        State::Starting,
        State::Running,
        State::Paused,
        State::Stopping,
        State::Stopped,
        State::Crashed,
    ];

    /// The lowercase name (as stored and serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Defined => "defined",
            State::Starting => "starting",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Crashed => "crashed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether a VMM process belongs to the VM in this state.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Paused | State::Stopping
        )
    }
}

/// `POST /v1/vms`: a VM definition. Unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    #[serde(default = "one")]
    pub cpus: u8,
    /// Guest memory in bytes.
    #[serde(default = "default_memory")]
    pub memory: u64,
    pub kernel: String,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
    /// virtio-blk disks, in PCI slot order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    /// virtio-net cards, in PCI slot order after the disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<NetSpec>,
    /// A virtio-rng device.
    #[serde(default)]
    pub rng: bool,
    /// A virtio-vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockSpec>,
    /// A virtio-balloon device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonSpec>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub autostart: bool,
}

/// A disk image's format, as stored (never probed from the file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

/// One disk of a VM definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub path: String,
    #[serde(default)]
    pub format: DiskFormat,
    #[serde(default)]
    pub readonly: bool,
}

/// Most disks per VM.
pub const MAX_DISKS: usize = 16;

/// One network card of a VM definition: a TAP (opened, or created, by the VMM) and the guest's
/// MAC. The daemon stores a locally administered MAC when none is given, so it stays the same
/// across starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    pub tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Most network cards per VM.
pub const MAX_NETS: usize = 8;

fn one() -> u8 {
    1
}

fn default_memory() -> u64 {
    512 << 20
}

impl VmSpec {
    /// Checks the name, vCPUs, memory and paths (paths must be absolute; the daemon confines
    /// them further).
    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.name)?;
        if self.cpus == 0 {
            return Err("cpus: must be at least 1".into());
        }
        let (lo, hi) = MEMORY_RANGE;
        if self.memory < lo || self.memory > hi || !self.memory.is_multiple_of(4096) {
            return Err(format!(
                "memory: {} bytes is outside {lo}..={hi} or not a multiple of 4096",
                self.memory
            ));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(format!(
                "disks: {} disks, at most {MAX_DISKS}",
                self.disks.len()
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            if !d.path.starts_with('/') || d.path.contains('\0') || d.path.contains(',') {
                return Err(format!(
                    "disks[{i}].path: {:?} is not an absolute path without ','",
                    d.path
                ));
            }
        }
        self.validate_nets()?;
        devices::validate(self.vsock.as_ref(), self.balloon.as_ref(), self.memory)?;
        for (field, p) in [
            ("kernel", Some(&self.kernel)),
            ("initrd", self.initrd.as_ref()),
        ] {
            if let Some(p) = p {
                if !p.starts_with('/') || p.contains('\0') {
                    return Err(format!("{field}: {p:?} is not an absolute path"));
                }
            }
        }
        Ok(())
    }
}

impl VmSpec {
    /// Checks the network cards: TAP names as Linux takes them, MACs unicast, neither twice.
    fn validate_nets(&self) -> Result<(), String> {
        if self.nets.len() > MAX_NETS {
            return Err(format!(
                "nets: {} cards, at most {MAX_NETS}",
                self.nets.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut macs = std::collections::HashSet::new();
        for (i, n) in self.nets.iter().enumerate() {
            check_tap_name(&n.tap).map_err(|e| format!("nets[{i}].tap: {e}"))?;
            if !seen.insert(&n.tap) {
                return Err(format!(
                    "nets[{i}].tap: tap `{}` is used by another card of this VM",
                    n.tap
                ));
            }
            if let Some(m) = &n.mac {
                let mac = parse_mac(m).map_err(|e| format!("nets[{i}].mac: {e}"))?;
                if !macs.insert(mac) {
                    return Err(format!(
                        "nets[{i}].mac: mac `{m}` is used by another card of this VM"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A VM as the daemon reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    #[serde(flatten)]
    pub spec: VmSpec,
    pub state: State,
    /// The VMM's pid while one runs.
    pub pid: Option<i32>,
    /// Restarts done by the policy since the last user start.
    pub restarts: u32,
    /// Why the last VMM ended.
    pub last_exit: Option<String>,
    /// The host side of the vsock device: a Unix socket the daemon places in the VM's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_socket: Option<String>,
}

/// One stored state change (`GET /v1/events`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing, stored id (the SSE `id:`).
    pub id: i64,
    /// Unix time in milliseconds.
    pub time_ms: i64,
    pub vm: String,
    pub state: State,
    pub message: String,
}

/// One route of the daemon's API.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// The success status.
    pub status: u16,
}

/// Every route thinvmd serves.
pub const ROUTES: &[Route] = &[
    Route {
        method: "get",
        path: "/v1/version",
        summary: "Daemon version",
        status: 200,
    },
    Route {
        method: "get",
        path: "/v1/vms",
        summary: "List VMs",
        status: 200,
    },
    Route {
        method: "post",
        path: "/v1/vms",
        summary: "Define a VM (body: VmSpec)",
        status: 201,
    },
    Route {
        method: "get",
        path: "/v1/vms/{name}",
        summary: "Show one VM",
        status: 200,
    },
    Route {
        method: "delete",
        path: "/v1/vms/{name}",
        summary: "Delete a VM that does not run",
        status: 204,
    },
    Route {
        method: "post",
        path: "/v1/vms/{name}/start",
        summary: "Start a VM",
        status: 200,
    },
    Route {
        method: "post",
        path: "/v1/vms/{name}/stop",
        summary: "Stop: ACPI power button, hard stop after ?timeout= seconds",
        status: 200,
    },
    Route {
        method: "post",
        path: "/v1/vms/{name}/restart",
        summary: "Stop (as stop, ?timeout=), wait until stopped, start",
        status: 200,
    },
    Route {
        method: "post",
        path: "/v1/vms/{name}/kill",
        summary: "Kill the VMM (SIGKILL)",
        status: 200,
    },
    Route {
        method: "post",
        path: "/v1/vms/{name}/pause",
        summary: "Pause the vCPUs",
        status: 200,
    },
    Route {
        method: "post",
        path: "/v1/vms/{name}/resume",
        summary: "Resume the vCPUs",
        status: 200,
    },
    Route {
        method: "get",
        path: "/v1/vms/{name}/logs",
        summary: "Console log (text; ?tail=BYTES)",
        status: 200,
    },
    Route {
        method: "get",
        path: "/v1/vms/{name}/console",
        summary: "Attach to the serial console (HTTP/1.1 Upgrade: thinvm-console, then raw bytes)",
        status: 101,
    },
    Route {
        method: "get",
        path: "/v1/events",
        summary: "State changes as server-sent events (Last-Event-ID resumes)",
        status: 200,
    },
    Route {
        method: "get",
        path: "/v1/openapi.json",
        summary: "This document",
        status: 200,
    },
    Route {
        method: "get",
        path: "/metrics",
        summary: "Prometheus text metrics",
        status: 200,
    },
];

/// The OpenAPI 3 document of the daemon's API, built from [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        let mut op = json!({
            "summary": r.summary,
            "responses": {
                r.status.to_string(): {"description": "success"},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if r.path.contains("{name}") {
            op["parameters"] = json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"}}]);
        }
        if r.method == "post" && r.path == "/v1/vms" {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VmSpec"}}}});
        }
        entry[r.method] = op;
    }
    let states: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
    let (vsock, balloon) = devices::openapi_properties();
    json!({
        "openapi": "3.0.3",
        "info": {"title": "thinvmd API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}},
            "VmSpec": {"type": "object", "required": ["name", "kernel"], "additionalProperties": false, "properties": {
                "name": {"type": "string"}, "cpus": {"type": "integer", "minimum": 1},
                "memory": {"type": "integer", "description": "bytes"},
                "kernel": {"type": "string"}, "initrd": {"type": "string"}, "cmdline": {"type": "string"},
                "disks": {"type": "array", "items": {"type": "object", "required": ["path"], "additionalProperties": false, "properties": {
                    "path": {"type": "string"}, "format": {"type": "string", "enum": ["raw", "qcow2"]}, "readonly": {"type": "boolean"}}}},
                "nets": {"type": "array", "maxItems": MAX_NETS, "items": {"type": "object", "required": ["tap"], "additionalProperties": false, "properties": {
                    "tap": {"type": "string", "minLength": 1, "maxLength": crate::net::MAX_TAP_NAME, "description": "TAP opened, or created, by the VMM"},
                    "mac": {"type": "string", "pattern": "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$", "description": "unicast; when absent the daemon stores a locally administered one"}}}},
                "rng": {"type": "boolean"}, "vsock": vsock, "balloon": balloon,
                "restart": {"type": "string", "enum": ["never", "on-failure", "always"]},
                "autostart": {"type": "boolean"}}},
            "State": {"type": "string", "enum": states}
        }}
    })
}

#[cfg(test)]
#[path = "daemon_tests.rs"]
mod tests;
