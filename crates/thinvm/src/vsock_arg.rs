//! `--vsock cid=N,socket=PATH`: the virtio-vsock device of `thinvm run`.
//!
//! The VMM listens on the Unix socket PATH (a stale socket there is replaced; anything else is
//! refused). A host process connects and writes `CONNECT <port>\n` to reach the guest's port,
//! and reads `OK <host port>\n` once the guest accepted; a guest connection to port P reaches
//! the host process listening on the Unix socket `PATH_P`. The CID is 3 to 4294967294.

use std::path::PathBuf;

use vmm::{valid_vsock_cid as valid_cid, Vm, VsockConfig};

/// Parses the `--vsock` value.
pub fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut socket) = (None, None);
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not KEY=VALUE (expected cid=N,socket=PATH)"))?;
        let dup = || format!("`{key}` is given twice");
        match key {
            "cid" if cid.is_some() => return Err(dup()),
            "cid" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("cid `{value}` is not a number"))?;
                if !valid_cid(n) {
                    return Err(format!(
                        "cid {n}: must be 3 to 4294967294 (0, 1, 2 and 4294967295 are reserved)"
                    ));
                }
                cid = Some(n);
            }
            "socket" if socket.is_some() => return Err(dup()),
            "socket" if value.is_empty() => return Err("socket path is empty".into()),
            "socket" => socket = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown vsock option `{key}` (cid, socket)")),
        }
    }
    match (cid, socket) {
        (Some(cid), Some(socket)) => Ok(VsockConfig { cid, socket }),
        (None, _) => Err("cid=N is missing".into()),
        (_, None) => Err("socket=PATH is missing".into()),
    }
}

/// Parses `thinvm vm create`'s `--vsock cid=N`: the daemon places the socket itself.
pub fn parse_vm_vsock(s: &str) -> Result<api::daemon::VsockSpec, String> {
    let value = s
        .strip_prefix("cid=")
        .ok_or_else(|| format!("`{s}` is not cid=N (the daemon places the socket itself)"))?;
    let cid: u64 = value
        .parse()
        .map_err(|_| format!("cid `{value}` is not a number"))?;
    if !valid_cid(cid) {
        return Err(format!(
            "cid {cid}: must be 3 to 4294967294 (0, 1, 2 and 4294967295 are reserved)"
        ));
    }
    Ok(api::daemon::VsockSpec { cid })
}

/// Adds the vsock device, if any.
pub fn attach(vm: &mut Vm, vsock: Option<&VsockConfig>) -> Result<(), vmm::Error> {
    match vsock {
        Some(v) => vm.pci().add_vsock(v),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_create_takes_only_a_cid() {
        assert_eq!(parse_vm_vsock("cid=42").unwrap().cid, 42);
        for (bad, want) in [
            ("cid=2", "reserved"),
            ("cid=4294967295", "reserved"),
            ("cid=x", "not a number"),
            ("cid=3,socket=/tmp/s", "not a number"),
            ("socket=/tmp/s", "not cid=N"),
            ("3", "not cid=N"),
        ] {
            let e = parse_vm_vsock(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn good_spec() {
        let v = parse_vsock("cid=3,socket=/tmp/v.sock").unwrap();
        assert_eq!((v.cid, v.socket), (3, PathBuf::from("/tmp/v.sock")));
        let v = parse_vsock("socket=rel.sock,cid=4294967294").unwrap();
        assert_eq!(v.cid, 4_294_967_294);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, want) in [
            ("socket=/tmp/v", "cid=N is missing"),
            ("cid=3", "socket=PATH is missing"),
            ("cid=2,socket=/tmp/v", "reserved"),
            ("cid=0,socket=/tmp/v", "reserved"),
            ("cid=1,socket=/tmp/v", "reserved"),
            ("cid=4294967295,socket=/tmp/v", "reserved"),
            ("cid=99999999999,socket=/tmp/v", "reserved"),
            ("cid=x,socket=/tmp/v", "not a number"),
            ("cid=-3,socket=/tmp/v", "not a number"),
            ("cid=,socket=/tmp/v", "not a number"),
            ("cid=3,socket=/tmp/v,port=5", "unknown vsock option `port`"),
            ("cid=3,cid=4,socket=/tmp/v", "twice"),
            ("cid=3,socket=/a,socket=/b", "twice"),
            ("cid=3,socket=", "empty"),
            ("cid=3,/tmp/v", "not KEY=VALUE"),
            ("", "not KEY=VALUE"),
        ] {
            let err = parse_vsock(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }
}
