use serde_json::json;

use super::*;
use crate::ch::ImageType;

fn minimal() -> Value {
    json!({"payload": {"kernel": "/k"}})
}

#[test]
fn minimal_config_gets_cloud_hypervisor_defaults() {
    let c = parse_vm_config(&minimal()).unwrap();
    assert_eq!(c.cpus.boot_vcpus, 1);
    assert_eq!(c.memory.size, 512 << 20);
    assert_eq!(c.serial.mode, ConsoleMode::Null);
    assert_eq!(c.console.mode, ConsoleMode::Tty);
    assert_eq!(c.payload.kernel.as_deref(), Some("/k"));
}

#[test]
fn supported_fields_are_read() {
    let v = json!({
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
        "memory": {"size": 64u64 << 20},
        "payload": {"kernel": "/k", "initramfs": "/i", "cmdline": "console=ttyS0"},
        "serial": {"mode": "File", "file": "/tmp/log"},
        "console": {"mode": "Off"},
        "pvpanic": true
    });
    let c = parse_vm_config(&v).unwrap();
    assert_eq!(c.cpus.boot_vcpus, 2);
    assert_eq!(c.memory.size, 64 << 20);
    assert_eq!(c.payload.initramfs.as_deref(), Some("/i"));
    assert_eq!(c.serial.file.as_deref(), Some("/tmp/log"));
    assert_eq!(c.console.mode, ConsoleMode::Off);
    assert!(c.pvpanic);
}

#[test]
fn defaults_of_unsupported_features_are_accepted() {
    let v = json!({
        "payload": {"kernel": "/k", "firmware": null},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "kvm_hyperv": false, "nested": true,
                 "max_phys_bits": 46, "affinity": [], "core_scheduling": "Vm"},
        "memory": {"size": 1u64 << 30, "shared": false, "hugepages": false, "thp": true,
                   "hotplug_method": "Acpi", "zones": null},
        "disks": [], "net": null, "rng": {"src": "/dev/urandom", "iommu": false},
        "iommu": false, "watchdog": false, "balloon": null,
        "platform": {"num_pci_segments": 1, "tdx": false},
        "debug_console": {"mode": "Off", "iobase": 233}
    });
    assert!(parse_vm_config(&v).is_ok(), "{:?}", parse_vm_config(&v));
}

fn error_for(v: Value) -> ConfigError {
    parse_vm_config(&v).expect_err("config must be refused")
}

#[test]
fn non_defaults_of_unsupported_features_name_the_field() {
    let cases = [
        (
            json!({"payload": {"kernel": "/k"}, "disks": [{"path": "/d", "direct": true}]}),
            "disks[0].direct",
        ),
        (
            json!({"payload": {"kernel": "/k"}, "disks": [{"path": "/d"}, {"path": "/e", "image_type": "Vhdx"}]}),
            "disks[1].image_type",
        ),
        (json!({"payload": {"kernel": "/k"}, "iommu": true}), "iommu"),
        (
            json!({"payload": {"kernel": "/k", "firmware": "/fw"}}),
            "payload.firmware",
        ),
        (
            json!({"payload": {"kernel": "/k"}, "memory": {"size": 1u64 << 30, "shared": true}}),
            "memory.shared",
        ),
        (
            json!({"payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 1, "max_vcpus": 4}}),
            "cpus.max_vcpus",
        ),
        (
            json!({"payload": {"kernel": "/k"}, "rng": {"src": "/dev/random"}}),
            "rng.src",
        ),
        (
            json!({"payload": {"kernel": "/k"}, "platform": {"tdx": true}}),
            "platform.tdx",
        ),
        (
            json!({"payload": {"kernel": "/k"}, "serial": {"mode": "Pty"}}),
            "serial.mode",
        ),
        (
            json!({"payload": {"kernel": "/k"}, "console": {"mode": "File", "file": "/x"}}),
            "console.mode",
        ),
    ];
    for (v, field) in cases {
        match error_for(v) {
            ConfigError::Unsupported { field: f, .. } => assert_eq!(f, field),
            other => panic!("{field}: expected Unsupported, got {other:?}"),
        }
    }
}

#[test]
fn unknown_fields_are_named() {
    let e = error_for(json!({"payload": {"kernel": "/k"}, "frobnicate": 1}));
    assert_eq!(
        e,
        ConfigError::Unknown {
            field: "frobnicate".into()
        }
    );
    let e = error_for(json!({"payload": {"kernel": "/k"}, "memory": {"size": 4096, "colour": 1}}));
    assert_eq!(
        e,
        ConfigError::Unknown {
            field: "memory.colour".into()
        }
    );
    assert!(e.to_string().contains("memory.colour"));
}

#[test]
fn bad_values_are_refused() {
    let e = error_for(json!({}));
    assert_eq!(
        e,
        ConfigError::Missing {
            field: "payload".into()
        }
    );
    let e = error_for(json!({"payload": {}}));
    assert_eq!(
        e,
        ConfigError::Missing {
            field: "payload.kernel".into()
        }
    );
    let e = error_for(json!({"payload": {"kernel": 5}}));
    assert!(matches!(e, ConfigError::Invalid { ref field, .. } if field == "payload.kernel"));
    let e = error_for(json!({"payload": {"kernel": "/k"}, "memory": {"size": 4097 * 1024}}));
    assert!(matches!(e, ConfigError::Invalid { ref field, .. } if field == "memory.size"));
    let e = error_for(json!({"payload": {"kernel": "/k"}, "memory": {"size": -1}}));
    assert!(matches!(e, ConfigError::Invalid { ref field, .. } if field == "memory.size"));
    let e = error_for(json!({"payload": {"kernel": "/k"}, "memory": {"size": 1u64 << 50}}));
    assert!(matches!(e, ConfigError::Invalid { ref field, .. } if field == "memory.size"));
    let e =
        error_for(json!({"payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 0, "max_vcpus": 0}}));
    assert!(matches!(e, ConfigError::Invalid { ref field, .. } if field == "cpus.boot_vcpus"));
    let e = error_for(json!({"payload": {"kernel": "/k"}, "serial": {"mode": "File"}}));
    assert_eq!(
        e,
        ConfigError::Missing {
            field: "serial.file".into()
        }
    );
    let e = error_for(json!([1, 2]));
    assert!(matches!(e, ConfigError::Invalid { .. }));
}

#[test]
fn disks_are_read() {
    let v = json!({"payload": {"kernel": "/k"}, "disks": [
        {"path": "/a.img"},
        {"path": "/b.qcow2", "image_type": "Qcow2", "readonly": true, "num_queues": 1, "sparse": true}
    ]});
    let c = parse_vm_config(&v).unwrap();
    assert_eq!(c.disks.len(), 2);
    assert_eq!(
        (c.disks[0].image_type, c.disks[0].readonly),
        (ImageType::Raw, false)
    );
    assert_eq!(
        (c.disks[1].image_type, c.disks[1].readonly),
        (ImageType::Qcow2, true)
    );
    let e = error_for(json!({"payload": {"kernel": "/k"}, "disks": [{"readonly": true}]}));
    assert_eq!(
        e,
        ConfigError::Missing {
            field: "disks[0].path".into()
        }
    );
    let many: Vec<_> = (0..17).map(|i| json!({"path": format!("/d{i}")})).collect();
    let e = error_for(json!({"payload": {"kernel": "/k"}, "disks": many}));
    assert!(matches!(e, ConfigError::Invalid { ref field, .. } if field == "disks"));
}

#[test]
fn rng_is_read() {
    assert!(!parse_vm_config(&minimal()).unwrap().rng);
    let v = json!({"payload": {"kernel": "/k"}, "rng": {"src": "/dev/urandom"}});
    assert!(parse_vm_config(&v).unwrap().rng);
    let v = json!({"payload": {"kernel": "/k"}, "rng": null});
    assert!(!parse_vm_config(&v).unwrap().rng);
}

#[test]
fn vsock_is_read_and_checked() {
    assert_eq!(parse_vm_config(&minimal()).unwrap().vsock, None);
    let v = json!({"payload": {"kernel": "/k"}, "vsock": null});
    assert_eq!(parse_vm_config(&v).unwrap().vsock, None);
    let v = json!({"payload": {"kernel": "/k"},
                   "vsock": {"cid": 3, "socket": "/run/v.sock", "iommu": false, "pci_segment": 0}});
    let got = parse_vm_config(&v).unwrap().vsock.unwrap();
    assert_eq!((got.cid, got.socket.as_str()), (3, "/run/v.sock"));
    for (vsock, field) in [
        (json!({"cid": 2, "socket": "/s"}), "vsock.cid"),
        (json!({"cid": 4294967295u64, "socket": "/s"}), "vsock.cid"),
        (json!({"cid": "3", "socket": "/s"}), "vsock.cid"),
        (json!({"socket": "/s"}), "vsock.cid"),
        (json!({"cid": 3}), "vsock.socket"),
        (json!({"cid": 3, "socket": ""}), "vsock.socket"),
        (
            json!({"cid": 3, "socket": "/s", "iommu": true}),
            "vsock.iommu",
        ),
        (json!({"cid": 3, "socket": "/s", "port": 1}), "vsock.port"),
        (json!(3), "vsock"),
    ] {
        let v = json!({"payload": {"kernel": "/k"}, "vsock": vsock});
        let e = error_for(v);
        assert!(
            e.to_string().contains(&format!("`{field}`")),
            "{field}: {e}"
        );
    }
}
