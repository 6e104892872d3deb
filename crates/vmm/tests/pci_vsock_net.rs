//! Adding vsock and vhost-net devices to a real KVM VM's PCI bus: bad CIDs and sockets refused
//! before anything is added, at most one vsock device, and vhost-net used where the host has it
//! or refused with a clear error where it does not. The vCPUs never run.

mod guest;
mod pci_support;

use pci_support::{build_vm, cfg_read32};

#[test]
fn vsock_is_added_once_with_a_valid_cid_and_a_usable_socket() {
    use vmm::VsockConfig;
    let dir = std::env::temp_dir().join(format!("thinvm-pci-vsock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let socket = dir.join("v.sock");
    let mut vm = build_vm();
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        let err = vm
            .pci()
            .add_vsock(&VsockConfig {
                cid,
                socket: socket.clone(),
            })
            .unwrap_err();
        assert!(err.to_string().contains("reserved"), "cid {cid}: {err}");
    }
    let file = dir.join("file");
    std::fs::write(&file, b"keep").unwrap();
    let err = vm
        .pci()
        .add_vsock(&VsockConfig {
            cid: 3,
            socket: file.clone(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(vm.pci().device_count(), 0);
    vm.pci()
        .add_vsock(&VsockConfig {
            cid: 3,
            socket: socket.clone(),
        })
        .unwrap();
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "listening"
    );
    let second = dir.join("w.sock");
    let err = vm
        .pci()
        .add_vsock(&VsockConfig {
            cid: 4,
            socket: second,
        })
        .unwrap_err();
    assert!(err.to_string().contains("at most one"), "{err}");
    // Refused devices take no name; the one added reports its counters in vm.counters.
    let groups = vm.pci().counters().groups();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0].0, "_vsock0");
    assert!(groups[0].1.contains(&("connections", 0)), "{groups:?}");
    assert_eq!(
        cfg_read32(&vm, 1, 0),
        0x1053_1af4,
        "virtio-vsock (0x1040 + 19)"
    );
    drop(vm);
    assert!(!socket.exists(), "the socket goes with the VM");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn vhost_net_is_used_where_the_host_has_it_and_refused_clearly_where_not() {
    let mut vm = build_vm();
    let net = vmm::NetConfig {
        tap: Some(format!("tvvh{}", std::process::id() % 100_000)),
        fd: None,
        mac: None,
        vhost: true,
    };
    if devices::virtio::net::Tap::open(net.tap.as_deref().unwrap()).is_err() {
        eprintln!("skipped: cannot create a TAP here (needs root and /dev/net/tun)");
        return;
    }
    let r = vm.pci().add_net(&net);
    if std::path::Path::new("/dev/vhost-net").exists() {
        r.expect("vhost-net card on a host with /dev/vhost-net");
        // Named, but no per-frame counters: the kernel moves the frames.
        let groups = vm.pci().counters().groups();
        assert_eq!(groups, vec![("_net0".to_string(), Vec::new())]);
    } else {
        let err = r.unwrap_err().to_string();
        assert!(
            err.contains("/dev/vhost-net") && err.contains("vhost_net module"),
            "{err}"
        );
    }
}
