//! The field tables of a Cloud Hypervisor `VmConfig`: for every object, each field it may
//! have and what it may hold (parsed by thinvm, or accepted only at Cloud Hypervisor's default).
//! [`super::config`] checks a body against them.

/// What a known field may hold.
#[derive(Clone, Copy)]
pub(super) enum Rule {
    /// Supported: parsed afterwards.
    Parsed,
    /// Unsupported: only null.
    Null,
    /// Unsupported list: only null or `[]`.
    Empty,
    /// Unsupported: null or this boolean.
    Bool(bool),
    /// Unsupported: null or this string.
    Str(&'static str),
    /// Unsupported: null or this integer.
    Int(u64),
    /// An object with its own table; null is accepted.
    Object(&'static [(&'static str, Rule)]),
}

pub(super) const TOP: &[(&str, Rule)] = &[
    ("cpus", Rule::Parsed),
    ("memory", Rule::Parsed),
    ("payload", Rule::Parsed),
    ("serial", Rule::Parsed),
    ("console", Rule::Parsed),
    ("pvpanic", Rule::Parsed),
    ("rate_limit_groups", Rule::Empty),
    ("disks", Rule::Parsed),
    ("net", Rule::Parsed),
    ("fs", Rule::Empty),
    ("generic_vhost_user", Rule::Empty),
    ("pmem", Rule::Empty),
    ("devices", Rule::Empty),
    ("user_devices", Rule::Empty),
    ("vdpa", Rule::Empty),
    ("numa", Rule::Empty),
    ("pci_segments", Rule::Empty),
    ("landlock_rules", Rule::Empty),
    ("rng", Rule::Parsed),
    ("balloon", Rule::Parsed),
    ("vsock", Rule::Parsed),
    ("tpm", Rule::Null),
    ("rtc", Rule::Null),
    ("debug_console", Rule::Object(DEBUG_CONSOLE)),
    ("platform", Rule::Object(PLATFORM)),
    ("iommu", Rule::Bool(false)),
    ("watchdog", Rule::Bool(false)),
    ("landlock_enable", Rule::Bool(false)),
];

pub(super) const CPUS: &[(&str, Rule)] = &[
    ("boot_vcpus", Rule::Parsed),
    ("max_vcpus", Rule::Parsed),
    ("topology", Rule::Null),
    ("kvm_hyperv", Rule::Bool(false)),
    ("max_phys_bits", Rule::Int(46)),
    ("nested", Rule::Bool(true)),
    ("affinity", Rule::Empty),
    ("features", Rule::Object(&[("amx", Rule::Bool(false))])),
    ("core_scheduling", Rule::Str("Vm")),
];

pub(super) const MEMORY: &[(&str, Rule)] = &[
    ("size", Rule::Parsed),
    ("hotplug_size", Rule::Int(0)),
    ("hotplugged_size", Rule::Int(0)),
    ("mergeable", Rule::Bool(false)),
    ("hotplug_method", Rule::Str("Acpi")),
    ("shared", Rule::Bool(false)),
    ("hugepages", Rule::Bool(false)),
    ("hugepage_size", Rule::Null),
    ("prefault", Rule::Bool(false)),
    ("reserve", Rule::Bool(false)),
    ("thp", Rule::Bool(true)),
    ("zones", Rule::Empty),
];

pub(super) const PAYLOAD: &[(&str, Rule)] = &[
    ("kernel", Rule::Parsed),
    ("initramfs", Rule::Parsed),
    ("cmdline", Rule::Parsed),
    ("firmware", Rule::Null),
    ("igvm", Rule::Null),
    ("host_data", Rule::Null),
];

pub(super) const CONSOLE: &[(&str, Rule)] = &[
    ("mode", Rule::Parsed),
    ("file", Rule::Parsed),
    ("socket", Rule::Null),
    ("iommu", Rule::Bool(false)),
    ("id", Rule::Null),
];

pub(super) const DISK: &[(&str, Rule)] = &[
    ("path", Rule::Parsed),
    ("readonly", Rule::Parsed),
    ("image_type", Rule::Parsed),
    ("direct", Rule::Bool(false)),
    ("iommu", Rule::Bool(false)),
    ("num_queues", Rule::Int(1)),
    ("queue_size", Rule::Int(128)),
    ("vhost_user", Rule::Bool(false)),
    ("vhost_socket", Rule::Null),
    ("rate_limiter_config", Rule::Null),
    ("pci_segment", Rule::Int(0)),
    ("pci_device_id", Rule::Null),
    ("id", Rule::Null),
    ("serial", Rule::Null),
    ("rate_limit_group", Rule::Null),
    ("queue_affinity", Rule::Empty),
    ("backing_files", Rule::Bool(false)),
    ("sparse", Rule::Bool(true)),
    ("lock_granularity", Rule::Str("ByteRange")),
];

pub(super) const VSOCK: &[(&str, Rule)] = &[
    ("cid", Rule::Parsed),
    ("socket", Rule::Parsed),
    ("iommu", Rule::Bool(false)),
    ("id", Rule::Null),
    ("pci_segment", Rule::Int(0)),
];

pub(super) const RNG: &[(&str, Rule)] = &[
    ("src", Rule::Str("/dev/urandom")),
    ("iommu", Rule::Bool(false)),
    ("id", Rule::Null),
    ("pci_segment", Rule::Int(0)),
    ("pci_device_id", Rule::Null),
];

const DEBUG_CONSOLE: &[(&str, Rule)] = &[
    ("mode", Rule::Str("Off")),
    ("file", Rule::Null),
    ("iobase", Rule::Int(0xe9)),
];

const PLATFORM: &[(&str, Rule)] = &[
    ("num_pci_segments", Rule::Int(1)),
    ("iommu_segments", Rule::Empty),
    ("iommu_address_width_bits", Rule::Null),
    ("system_serial_number", Rule::Null),
    ("serial_number", Rule::Null),
    ("system_uuid", Rule::Null),
    ("uuid", Rule::Null),
    ("oem_strings", Rule::Empty),
    ("system_manufacturer", Rule::Null),
    ("system_product_name", Rule::Null),
    ("system_version", Rule::Null),
    ("system_family", Rule::Null),
    ("system_sku_number", Rule::Null),
    ("chassis_asset_tag", Rule::Null),
    ("tdx", Rule::Bool(false)),
    ("sev_snp", Rule::Bool(false)),
    ("iommufd", Rule::Bool(false)),
    ("vfio_p2p_dma", Rule::Bool(true)),
];
