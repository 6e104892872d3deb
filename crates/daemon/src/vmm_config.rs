//! The `vm.create` body the daemon sends to a VM's VMM, built from the definition.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use api::daemon::{DiskFormat, VmSpec, VSOCK_SOCKET};
use serde_json::{json, Value};

use crate::supervisor::DEFAULT_CMDLINE;

/// The descriptors a VMM inherits for its payload and disks.
pub(crate) struct PayloadFds {
    pub kernel: OwnedFd,
    pub initrd: Option<OwnedFd>,
    pub disks: Vec<OwnedFd>,
}

impl PayloadFds {
    pub fn raw(&self) -> Vec<RawFd> {
        let mut v = vec![self.kernel.as_raw_fd()];
        v.extend(self.initrd.iter().map(|f| f.as_raw_fd()));
        v.extend(self.disks.iter().map(|f| f.as_raw_fd()));
        v
    }
}

/// How the VMM names an inherited descriptor (same number in the child).
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The per-VM API's `VmConfig` for `spec`, whose folder is `dir` (console log and vsock socket
/// there; the vsock socket's place is the daemon's, never the client's).
pub(crate) fn vm_config(dir: &Path, spec: &VmSpec, files: &PayloadFds) -> Value {
    json!({
        "cpus": {"boot_vcpus": spec.cpus, "max_vcpus": spec.cpus},
        "memory": {"size": spec.memory},
        "payload": {
            "kernel": fd_path(&files.kernel),
            "initramfs": files.initrd.as_ref().map(fd_path),
            "cmdline": spec.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE),
        },
        "disks": spec.disks.iter().zip(&files.disks).map(|(d, fd)| json!({
            "path": fd_path(fd),
            "readonly": d.readonly,
            "image_type": match d.format {
                DiskFormat::Raw => "Raw",
                DiskFormat::Qcow2 => "Qcow2",
            },
        })).collect::<Vec<_>>(),
        "net": spec.nets.iter().map(|n| json!({"tap": n.tap, "mac": n.mac})).collect::<Vec<_>>(),
        "rng": if spec.rng { json!({"src": "/dev/urandom"}) } else { json!(null) },
        "vsock": spec.vsock.as_ref().map(|v| json!({
            "cid": v.cid,
            "socket": dir.join(VSOCK_SOCKET),
        })),
        "balloon": spec.balloon.as_ref().map(|b| json!({
            "size": b.size,
            "deflate_on_oom": b.deflate_on_oom,
            "free_page_reporting": b.free_page_reporting,
        })),
        "serial": {"mode": "File", "file": dir.join("console.log")},
        "console": {"mode": "Off"},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(disks: usize) -> PayloadFds {
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        PayloadFds {
            kernel: null(),
            initrd: None,
            disks: (0..disks).map(|_| null()).collect(),
        }
    }

    #[test]
    fn vsock_socket_is_in_the_vm_folder_and_balloon_is_passed() {
        let spec: VmSpec = serde_json::from_str(
            r#"{"name":"web","kernel":"/k","memory":134217728,"vsock":{"cid":42},
                "balloon":{"size":67108864,"deflate_on_oom":true}}"#,
        )
        .unwrap();
        let files = fds(0);
        let c = vm_config(Path::new("/var/lib/thinvmd/vms/web"), &spec, &files);
        assert_eq!(
            c["vsock"],
            json!({"cid": 42, "socket": "/var/lib/thinvmd/vms/web/vsock.sock"})
        );
        assert_eq!(
            c["balloon"],
            json!({"size": 64 << 20, "deflate_on_oom": true, "free_page_reporting": false})
        );
        assert_eq!(c["payload"]["kernel"], fd_path(&files.kernel));
        // The per-VM API takes it as it is.
        let parsed = api::ch::parse_vm_config(&c).unwrap();
        let v = parsed.vsock.expect("vsock");
        assert_eq!(
            (v.cid, v.socket.as_str()),
            (42, "/var/lib/thinvmd/vms/web/vsock.sock")
        );
        assert_eq!(parsed.balloon.expect("balloon").size, 64 << 20);
    }

    #[test]
    fn without_them_neither_is_sent() {
        let spec: VmSpec = serde_json::from_str(r#"{"name":"a","kernel":"/k"}"#).unwrap();
        let c = vm_config(Path::new("/s/vms/a"), &spec, &fds(0));
        assert!(c["vsock"].is_null() && c["balloon"].is_null(), "{c}");
        assert!(api::ch::parse_vm_config(&c).unwrap().vsock.is_none());
    }
}
