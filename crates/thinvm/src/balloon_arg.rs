//! `--balloon [size=SIZE][,deflate_on_oom=on|off][,free_page_reporting=on|off]`: the
//! virtio-balloon device of `thinvm run`.
//!
//! A bare `--balloon` is an empty balloon (size 0) with free page reporting and deflate-on-OOM
//! on: the guest gives its free memory back by itself, and the balloon can be inflated at run
//! time through the API (`PUT /api/v1/vm.resize` with `desired_balloon`).

use vmm::{BalloonConfig, BalloonHandle, Vm};

use crate::size::parse_size;

fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("{key}=`{value}`: expected on or off")),
    }
}

/// Parses the `--balloon` value (empty for a bare `--balloon`).
pub fn parse_balloon(s: &str) -> Result<BalloonConfig, String> {
    let mut cfg = BalloonConfig {
        size: 0,
        deflate_on_oom: true,
        free_page_reporting: true,
    };
    if s.is_empty() {
        return Ok(cfg);
    }
    let mut seen = Vec::new();
    for part in s.split(',') {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            format!("`{part}` is not KEY=VALUE (size, deflate_on_oom, free_page_reporting)")
        })?;
        if seen.contains(&key) {
            return Err(format!("`{key}` is given twice"));
        }
        seen.push(key);
        match key {
            "size" => cfg.size = parse_size(value)?,
            "deflate_on_oom" => cfg.deflate_on_oom = on_off(key, value)?,
            "free_page_reporting" => cfg.free_page_reporting = on_off(key, value)?,
            _ => {
                return Err(format!(
                    "unknown balloon option `{key}` (size, deflate_on_oom, free_page_reporting)"
                ))
            }
        }
    }
    Ok(cfg)
}

/// Checks the balloon against the guest's memory.
pub fn check(cfg: &BalloonConfig, memory: u64) -> Result<(), String> {
    if cfg.size > memory {
        return Err(format!(
            "--balloon size={} is larger than the guest's memory ({memory} bytes)",
            cfg.size
        ));
    }
    Ok(())
}

/// The daemon's balloon from `--balloon` (`thinvm vm create`).
pub fn balloon_spec(cfg: &BalloonConfig) -> api::daemon::BalloonSpec {
    api::daemon::BalloonSpec {
        size: cfg.size,
        deflate_on_oom: cfg.deflate_on_oom,
        free_page_reporting: cfg.free_page_reporting,
    }
}

/// Adds the balloon, if any.
pub fn attach(
    vm: &mut Vm,
    cfg: Option<&BalloonConfig>,
) -> Result<Option<BalloonHandle>, vmm::Error> {
    cfg.map(|c| vm.pci().add_balloon(c)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_full_specs() {
        let b = parse_balloon("").unwrap();
        assert_eq!(
            (b.size, b.deflate_on_oom, b.free_page_reporting),
            (0, true, true)
        );
        let b = parse_balloon("size=128M,deflate_on_oom=off,free_page_reporting=off").unwrap();
        assert_eq!(
            (b.size, b.deflate_on_oom, b.free_page_reporting),
            (128 << 20, false, false)
        );
        let b = parse_balloon("free_page_reporting=on").unwrap();
        assert_eq!((b.size, b.free_page_reporting), (0, true));
        assert!(check(&parse_balloon("size=256M").unwrap(), 256 << 20).is_ok());
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, want) in [
            ("128M", "not KEY=VALUE"),
            ("size=lots", "not a size"),
            ("size=1Q", "unknown unit"),
            ("deflate_on_oom=yes", "expected on or off"),
            ("free_page_reporting=", "expected on or off"),
            ("size=1M,size=2M", "twice"),
            ("stats=on", "unknown balloon option `stats`"),
            ("size=1M,", "not KEY=VALUE"),
        ] {
            let err = parse_balloon(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
        }
        let err = check(&parse_balloon("size=1G").unwrap(), 512 << 20).unwrap_err();
        assert!(err.contains("larger than the guest's memory"), "{err}");
    }
}
