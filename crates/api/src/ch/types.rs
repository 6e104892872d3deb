//! Request and response bodies of the per-VM API, in Cloud Hypervisor's field names. Sizes are
//! in bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /vmm.ping`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    pub build_version: String,
    pub version: String,
    pub pid: i64,
    pub features: Vec<String>,
}

/// The VM's state as `vm.info` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
    Paused,
}

/// `GET /vm.info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub config: VmConfig,
    pub state: VmState,
    pub memory_actual_size: u64,
}

/// `GET /vm.counters`: device name -> counter name -> value.
pub type VmCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// vCPUs (no hotplug: `max_vcpus` equals `boot_vcpus`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    pub boot_vcpus: u8,
    pub max_vcpus: u8,
}

/// Guest memory in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    pub size: u64,
}

/// What the guest boots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// Where a console's output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    Off,
    Null,
    Tty,
    File,
}

/// The serial port's (or the virtio console's) output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    pub mode: ConsoleMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// A disk image's format (never probed from the file: absent means raw).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    #[default]
    Raw,
    Qcow2,
}

/// A virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub image_type: ImageType,
}

/// A virtio-balloon device (`size` in bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonConfig {
    pub size: u64,
    #[serde(default)]
    pub deflate_on_oom: bool,
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// `PUT /vm.resize`: only the balloon can change; the other fields must be absent or equal
/// to the VM's current values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmResize {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_vcpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_ram: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_balloon: Option<u64>,
}

/// A virtio-net card on a TAP opened (or created) by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    pub tap: String,
    /// `aa:bb:cc:dd:ee:ff`; absent: the VMM derives a locally administered one from the TAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// The supported part of Cloud Hypervisor's `VmConfig`, as [`super::parse_vm_config`] returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub cpus: CpusConfig,
    pub memory: MemoryConfig,
    pub payload: PayloadConfig,
    pub serial: ConsoleConfig,
    pub console: ConsoleConfig,
    pub pvpanic: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// A virtio-rng device (given as `rng: {"src": "/dev/urandom"}`; absent: none).
    #[serde(default)]
    pub rng: bool,
    /// A virtio-balloon device (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
    /// A virtio-vsock device bridged to Unix sockets (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
}

/// A virtio-vsock device: the guest's CID and the host's Unix socket (Firecracker's
/// convention: `CONNECT <port>\n` on it reaches the guest; guest port P reaches `socket_P`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    pub cid: u64,
    pub socket: String,
}

impl VmConfig {
    /// Cloud Hypervisor's defaults (1 vCPU, 512 MiB, serial Null, console Tty) with a payload.
    pub fn with_payload(payload: PayloadConfig) -> Self {
        VmConfig {
            cpus: CpusConfig {
                boot_vcpus: 1,
                max_vcpus: 1,
            },
            memory: MemoryConfig { size: 512 << 20 },
            payload,
            serial: ConsoleConfig {
                mode: ConsoleMode::Null,
                file: None,
            },
            console: ConsoleConfig {
                mode: ConsoleMode::Tty,
                file: None,
            },
            pvpanic: false,
            disks: Vec::new(),
            net: Vec::new(),
            rng: false,
            vsock: None,
            balloon: None,
        }
    }
}
