//! `--net tap=NAME[,mac=MAC][,vhost=on|off]` or `--net fd=N[,...]`: the virtio-net cards of
//! `thinvm run`.
//!
//! `tap=NAME` opens the TAP, creating it when it does not exist (which needs CAP_NET_ADMIN);
//! `fd=N` takes a TAP descriptor inherited from the parent (opened with IFF_VNET_HDR). Without
//! `mac=`, the guest's MAC is locally administered and derived from the TAP's name (FNV-1a), so
//! the same TAP gives the same MAC from one run to the next. Cards get PCI slots after the disks,
//! in command-line order. `vhost=on` lets the kernel's vhost-net serve the card's rings (a host
//! without `/dev/vhost-net` is an error at start-up, never a silent fallback); off by default.

use std::collections::HashSet;

use vmm::{NetConfig, Vm};

pub use api::net::parse_mac;

/// Parses one `--net` value.
pub fn parse_net(s: &str) -> Result<NetConfig, String> {
    let mut cfg = NetConfig {
        tap: None,
        fd: None,
        mac: None,
        vhost: false,
    };
    let mut vhost_given = false;
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not KEY=VALUE (expected tap=NAME[,mac=MAC])"))?;
        let dup = || format!("`{key}` is given twice");
        match key {
            "tap" if cfg.tap.is_some() => return Err(dup()),
            "tap" => {
                api::net::check_tap_name(value)?;
                cfg.tap = Some(value.to_string())
            }
            "fd" if cfg.fd.is_some() => return Err(dup()),
            "fd" => {
                let fd: i32 = value
                    .parse()
                    .map_err(|_| format!("fd `{value}` is not a number"))?;
                if fd < 3 {
                    return Err(format!("fd {fd} is stdin, stdout or stderr, not a TAP"));
                }
                cfg.fd = Some(fd);
            }
            "mac" if cfg.mac.is_some() => return Err(dup()),
            "mac" => cfg.mac = Some(parse_mac(value)?),
            "vhost" if vhost_given => return Err(dup()),
            "vhost" => {
                vhost_given = true;
                cfg.vhost = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("vhost `{value}`: expected on or off")),
                };
            }
            _ => return Err(format!("unknown net option `{key}` (tap, fd, mac, vhost)")),
        }
    }
    match (&cfg.tap, cfg.fd) {
        (Some(_), Some(_)) => Err("give tap=NAME or fd=N, not both".into()),
        (None, None) => Err("tap=NAME or fd=N is missing".into()),
        _ => Ok(cfg),
    }
}

/// Checks that no TAP name, fd or MAC is given twice.
pub fn check_unique(nets: &[NetConfig]) -> Result<(), String> {
    let (mut taps, mut fds, mut macs) = (HashSet::new(), HashSet::new(), HashSet::new());
    for n in nets {
        if n.tap.as_ref().is_some_and(|t| !taps.insert(t.clone()))
            || n.fd.is_some_and(|f| !fds.insert(f))
            || n.mac.is_some_and(|m| !macs.insert(m))
        {
            return Err(format!("--net {n:?}: its tap, fd or mac is already used"));
        }
    }
    Ok(())
}

/// A `--net` of `thinvm vm create` as the daemon stores it: by TAP name only (the daemon's
/// VMM cannot inherit the CLI's descriptors), and without vhost (the daemon's VM definitions
/// have no such field).
pub fn net_spec(n: &NetConfig) -> Result<api::daemon::NetSpec, String> {
    if n.vhost {
        return Err("vhost=on is not supported by the daemon's VM definitions".into());
    }
    let tap = n
        .tap
        .clone()
        .ok_or("fd=N cannot be passed to the daemon: give tap=NAME")?;
    Ok(api::daemon::NetSpec {
        tap,
        mac: n.mac.map(api::net::format_mac),
    })
}

/// The VMM's card from the per-VM API's (the daemon passes the stored MAC).
pub fn from_api(n: &api::ch::NetConfig) -> Result<NetConfig, String> {
    api::net::check_tap_name(&n.tap)?;
    Ok(NetConfig {
        tap: Some(n.tap.clone()),
        fd: None,
        mac: n.mac.as_deref().map(parse_mac).transpose()?,
        vhost: false,
    })
}

/// Adds the network cards, in order.
pub fn attach(vm: &mut Vm, nets: &[NetConfig]) -> Result<(), vmm::Error> {
    for n in nets {
        vm.pci().add_net(n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_specs() {
        let n = parse_net("tap=tap0,mac=52:54:00:12:34:56").unwrap();
        assert_eq!(n.tap.as_deref(), Some("tap0"));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        let n = parse_net("fd=7").unwrap();
        assert_eq!((n.tap, n.fd, n.mac, n.vhost), (None, Some(7), None, false));
        assert!(parse_net("tap=tap0,vhost=on").unwrap().vhost);
        assert!(!parse_net("tap=tap0,vhost=off").unwrap().vhost);
        assert!(
            parse_net("fd=5,mac=02:00:00:00:00:01,vhost=on")
                .unwrap()
                .vhost
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, want) in [
            ("tap0", "not KEY=VALUE"),
            ("mac=02:00:00:00:00:01", "missing"),
            ("tap=a,fd=4", "not both"),
            ("tap=a,tap=b", "twice"),
            ("tap=", "1 to 15"),
            ("tap=a b", "whitespace"),
            ("tap=a/b", "'/'"),
            ("tap=0123456789abcdef", "1 to 15"),
            ("fd=x", "not a number"),
            ("fd=2", "stderr"),
            ("tap=a,mac=01:00:00:00:00:01", "multicast"),
            ("tap=a,mac=02:00:00:00:00", "six hex bytes"),
            ("tap=a,mac=02:00:00:00:00:01:02", "six hex bytes"),
            ("tap=a,mac=02:00:00:00:00:zz", "six hex bytes"),
            ("tap=a,mac=2:00:00:00:00:001", "six hex bytes"),
            ("tap=a,queues=2", "unknown net option `queues`"),
            ("tap=a,vhost=yes", "vhost `yes`: expected on or off"),
            ("tap=a,vhost=", "vhost ``: expected on or off"),
            ("tap=a,vhost=ON", "expected on or off"),
            ("tap=a,vhost=on,vhost=off", "`vhost` is given twice"),
            ("vhost=on", "missing"),
        ] {
            let err = parse_net(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }

    #[test]
    fn daemon_cards_by_name_only() {
        let n = parse_net("tap=tap0,mac=52:54:00:12:34:56").unwrap();
        let s = net_spec(&n).unwrap();
        assert_eq!(
            (s.tap.as_str(), s.mac.as_deref()),
            ("tap0", Some("52:54:00:12:34:56"))
        );
        assert_eq!(net_spec(&parse_net("tap=t1").unwrap()).unwrap().mac, None);
        assert!(net_spec(&parse_net("fd=5").unwrap())
            .unwrap_err()
            .contains("tap=NAME"));
        assert!(net_spec(&parse_net("tap=t1,vhost=on").unwrap())
            .unwrap_err()
            .contains("vhost=on"));
        let back = from_api(&api::ch::NetConfig {
            tap: "tap0".into(),
            mac: s.mac,
        })
        .unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn duplicates_are_refused() {
        let a = parse_net("tap=a").unwrap();
        let b = parse_net("tap=b").unwrap();
        assert!(check_unique(&[a.clone(), b.clone()]).is_ok());
        assert!(check_unique(&[a.clone(), b, a]).is_err());
        let f = parse_net("fd=5").unwrap();
        assert!(check_unique(&[f.clone(), f]).is_err());
        let m1 = parse_net("tap=x,mac=02:00:00:00:00:01").unwrap();
        let m2 = parse_net("tap=y,mac=02:00:00:00:00:01").unwrap();
        assert!(check_unique(&[m1, m2]).is_err());
    }
}
