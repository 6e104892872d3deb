//! Network card values shared by the per-VM API, the daemon and the CLI: MAC addresses and TAP
//! names, checked the same way everywhere.

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_TAP_NAME: usize = 15;

/// Parses a MAC address `aa:bb:cc:dd:ee:ff` (a multicast address is refused).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("mac `{s}` is not six hex bytes separated by `:`");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!("mac `{s}` is a multicast address"));
    }
    Ok(mac)
}

/// Writes a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// A locally administered, unicast MAC from `random` bytes (first byte: bit 1 set, bit 0 clear).
pub fn local_mac(random: [u8; 6]) -> [u8; 6] {
    let mut mac = random;
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// Checks a TAP name as Linux checks interface names: 1 to 15 bytes, not `.` or `..`, no `/`,
/// `:`, whitespace or control characters.
pub fn check_tap_name(name: &str) -> Result<(), String> {
    let bad_char = |c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control();
    if name.is_empty() || name.len() > MAX_TAP_NAME {
        return Err(format!("tap name `{name}`: 1 to {MAX_TAP_NAME} characters"));
    }
    if name == "." || name == ".." || name.chars().any(bad_char) {
        return Err(format!(
            "tap name {name:?}: no '/', ':' or whitespace, and not `.` or `..`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:zz",
            "2:54:00:12:34:056",
        ] {
            assert!(parse_mac(bad).unwrap_err().contains("six hex"), "{bad}");
        }
        assert!(parse_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
        assert_eq!(
            format_mac([0x02, 0xab, 0, 1, 0x10, 0xff]),
            "02:ab:00:01:10:ff"
        );
        for r in [[0u8; 6], [0xff; 6], [0x01, 2, 3, 4, 5, 6]] {
            let m = local_mac(r);
            assert_eq!(m[0] & 3, 2, "{m:?}");
            assert_eq!(parse_mac(&format_mac(m)), Ok(m));
        }
    }

    #[test]
    fn tap_names() {
        for ok in ["tap0", "t", "vm-web.0_x", &"x".repeat(15)] {
            assert!(check_tap_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            &"x".repeat(16),
            "a/b",
            "a b",
            "a:1",
            ".",
            "..",
            "a\tb",
            "a\nb",
        ] {
            assert!(check_tap_name(bad).is_err(), "{bad:?}");
        }
    }
}
