//! `VmConfig.net`: virtio-net cards on TAPs named in `tap`, with an optional `mac`; every other
//! field of Cloud Hypervisor's `NetConfig` only at its default (a child of `config`, whose
//! table rules it uses).

use std::collections::HashSet;

use serde_json::Value;

use super::{check, join, opt_string, ConfigError, Rule};
use crate::ch::types::NetConfig;
use crate::net::{check_tap_name, parse_mac};

/// Most network cards per VM.
pub const MAX_NETS: usize = 8;

const NET: &[(&str, Rule)] = &[
    ("tap", Rule::Parsed),
    ("mac", Rule::Parsed),
    ("ip", Rule::Str("192.168.249.1")),
    ("mask", Rule::Str("255.255.255.0")),
    ("host_mac", Rule::Null),
    ("mtu", Rule::Null),
    ("iommu", Rule::Bool(false)),
    ("num_queues", Rule::Int(2)),
    ("queue_size", Rule::Int(256)),
    ("vhost_user", Rule::Bool(false)),
    ("vhost_socket", Rule::Null),
    ("vhost_mode", Rule::Str("Client")),
    ("id", Rule::Null),
    ("fds", Rule::Null),
    ("pci_segment", Rule::Int(0)),
    ("pci_device_id", Rule::Null),
    ("rate_limiter_config", Rule::Null),
    ("offload_tso", Rule::Bool(true)),
    ("offload_ufo", Rule::Bool(true)),
    ("offload_csum", Rule::Bool(true)),
];

fn invalid(field: String, reason: String) -> ConfigError {
    ConfigError::Invalid { field, reason }
}

/// Reads the `net` list: a TAP name per card (required: thinvm takes no inherited descriptors
/// through the API), MACs unicast and unique, TAPs unique.
pub(super) fn parse_net(v: Option<&Value>) -> Result<Vec<NetConfig>, ConfigError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = v
        .as_array()
        .ok_or_else(|| invalid("net".into(), format!("expected a list, got {v}")))?;
    if list.len() > MAX_NETS {
        return Err(invalid(
            "net".into(),
            format!("{} cards: at most {MAX_NETS}", list.len()),
        ));
    }
    let (mut taps, mut macs) = (HashSet::new(), HashSet::new());
    let mut out = Vec::with_capacity(list.len());
    for (i, n) in list.iter().enumerate() {
        let field = format!("net[{i}]");
        let obj = check(n, &field, NET)?;
        let tap_field = join(&field, "tap");
        let tap = opt_string(obj, &field, "tap")?.ok_or(ConfigError::Missing {
            field: tap_field.clone(),
        })?;
        check_tap_name(&tap).map_err(|r| invalid(tap_field.clone(), r))?;
        if !taps.insert(tap.clone()) {
            return Err(invalid(tap_field, format!("tap `{tap}` is used twice")));
        }
        let mac = opt_string(obj, &field, "mac")?;
        if let Some(m) = &mac {
            let mac_field = join(&field, "mac");
            let parsed = parse_mac(m).map_err(|r| invalid(mac_field.clone(), r))?;
            if !macs.insert(parsed) {
                return Err(invalid(mac_field, format!("mac `{m}` is used twice")));
            }
        }
        out.push(NetConfig { tap, mac });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::parse_vm_config;
    use super::*;

    fn with_net(net: Value) -> Result<Vec<NetConfig>, ConfigError> {
        parse_vm_config(&json!({"payload": {"kernel": "/k"}, "net": net})).map(|c| c.net)
    }

    #[test]
    fn cards_are_read_with_defaults_accepted() {
        let n = with_net(json!([
            {"tap": "tap0", "mac": "52:54:00:00:00:01", "num_queues": 2, "queue_size": 256,
             "ip": "192.168.249.1", "mask": "255.255.255.0", "offload_tso": true, "id": null},
            {"tap": "tap1"}
        ]))
        .unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].mac.as_deref(), Some("52:54:00:00:00:01"));
        assert_eq!((n[1].tap.as_str(), n[1].mac.as_deref()), ("tap1", None));
        assert_eq!(with_net(json!([])).unwrap(), []);
        assert_eq!(with_net(Value::Null).unwrap(), []);
    }

    #[test]
    fn bad_cards_name_the_field() {
        for (net, field) in [
            (json!([{"tap": "t0", "num_queues": 4}]), "net[0].num_queues"),
            (
                json!([{"tap": "t0", "vhost_user": true}]),
                "net[0].vhost_user",
            ),
            (json!([{"tap": "t0", "mtu": 9000}]), "net[0].mtu"),
            (json!([{"tap": "t0", "ip": "10.0.0.1"}]), "net[0].ip"),
            (
                json!([{"tap": "t0", "offload_csum": false}]),
                "net[0].offload_csum",
            ),
            (json!([{"tap": "t0"}, {"tap": "t0"}]), "net[1].tap"),
            (json!([{"tap": "0123456789abcdef"}]), "net[0].tap"),
            (json!([{"tap": "a/b"}]), "net[0].tap"),
            (json!([{"mac": "52:54:00:00:00:01"}]), "net[0].tap"),
            (
                json!([{"tap": "t0", "mac": "01:00:00:00:00:01"}]),
                "net[0].mac",
            ),
            (
                json!([{"tap": "t0", "mac": "52:54:00:00:01"}]),
                "net[0].mac",
            ),
            (
                json!([{"tap": "a", "mac": "02:00:00:00:00:01"}, {"tap": "b", "mac": "02:00:00:00:00:01"}]),
                "net[1].mac",
            ),
            (json!([{"tap": "t0", "colour": 1}]), "net[0].colour"),
            (json!({"tap": "t0"}), "net"),
        ] {
            let e = with_net(net.clone()).expect_err("refused");
            assert!(e.to_string().contains(&format!("`{field}`")), "{net}: {e}");
        }
    }
}
