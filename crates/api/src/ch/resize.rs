//! The balloon: its part of `vm.create` (`balloon: {size, deflate_on_oom,
//! free_page_reporting}`) and `PUT /vm.resize`, where only `desired_balloon` may change.

use serde_json::Value;

use super::config::{check, int, join, present, ConfigError, MAX_MEMORY};
use super::rules::Rule;
use super::types::{BalloonConfig, VmConfig, VmResize};
use crate::ApiError;

const BALLOON: &[(&str, Rule)] = &[
    ("size", Rule::Parsed),
    ("deflate_on_oom", Rule::Parsed),
    ("free_page_reporting", Rule::Parsed),
];

fn flag(obj: &serde_json::Map<String, Value>, key: &str) -> Result<bool, ConfigError> {
    match present(obj, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ConfigError::Invalid {
            field: join("balloon", key),
            reason: format!("expected a boolean, got {other}"),
        }),
    }
}

/// The `balloon` object of a `VmConfig` (None when absent or null).
pub fn parse_balloon(v: Option<&Value>) -> Result<Option<BalloonConfig>, ConfigError> {
    let Some(v) = v else {
        return Ok(None);
    };
    let obj = check(v, "balloon", BALLOON)?;
    let size = int(obj, "balloon", "size", 0, MAX_MEMORY)?.ok_or(ConfigError::Missing {
        field: "balloon.size".into(),
    })?;
    Ok(Some(BalloonConfig {
        size,
        deflate_on_oom: flag(obj, "deflate_on_oom")?,
        free_page_reporting: flag(obj, "free_page_reporting")?,
    }))
}

/// Checks a `vm.create` config's balloon against its memory.
pub fn check_balloon_fits(c: &VmConfig) -> Result<(), ConfigError> {
    match &c.balloon {
        Some(b) if b.size > c.memory.size => Err(ConfigError::Invalid {
            field: "balloon.size".into(),
            reason: format!("{} is larger than memory.size {}", b.size, c.memory.size),
        }),
        _ => Ok(()),
    }
}

/// Reads a `vm.resize` body: an object with only Cloud Hypervisor's three fields, each a
/// non-negative integer or null.
pub fn parse_resize(body: &[u8]) -> Result<VmResize, ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("vm.resize: {m}"));
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad(format!("expected an object, got {v}")))?;
    let mut r = VmResize::default();
    for (key, value) in obj {
        let slot = match key.as_str() {
            "desired_vcpus" => &mut r.desired_vcpus,
            "desired_ram" => &mut r.desired_ram,
            "desired_balloon" => &mut r.desired_balloon,
            _ => return Err(bad(format!("unknown field `{key}`"))),
        };
        if value.is_null() {
            continue;
        }
        *slot = Some(value.as_u64().ok_or_else(|| {
            bad(format!(
                "field `{key}` is invalid: expected a non-negative integer, got {value}"
            ))
        })?);
    }
    Ok(r)
}

impl VmResize {
    /// Checks the request against the VM's `config`: vCPUs and RAM may only be given at
    /// their current values (no hotplug), the balloon must exist and fit in memory. Returns
    /// the new balloon size, if one is asked for.
    pub fn balloon_for(&self, config: &VmConfig) -> Result<Option<u64>, ApiError> {
        let unsupported = |field: &str, value: u64, now: u64| {
            ApiError::bad_request(format!(
                "vm.resize: field `{field}` = {value} is not supported by thinvm (no hotplug: \
                 only the current value {now} is accepted)"
            ))
        };
        let vcpus = u64::from(config.cpus.boot_vcpus);
        if let Some(v) = self.desired_vcpus.filter(|&v| v != vcpus) {
            return Err(unsupported("desired_vcpus", v, vcpus));
        }
        if let Some(v) = self.desired_ram.filter(|&v| v != config.memory.size) {
            return Err(unsupported("desired_ram", v, config.memory.size));
        }
        let Some(size) = self.desired_balloon else {
            return Ok(None);
        };
        if config.balloon.is_none() {
            return Err(ApiError::bad_request(
                "vm.resize: field `desired_balloon`: the VM has no balloon device",
            ));
        }
        if size > config.memory.size {
            return Err(ApiError::bad_request(format!(
                "vm.resize: field `desired_balloon` = {size} is larger than the VM's memory {}",
                config.memory.size
            )));
        }
        Ok(Some(size))
    }
}
