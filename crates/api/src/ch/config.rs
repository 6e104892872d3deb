//! Reading a Cloud Hypervisor `VmConfig`: fields thinvm supports are parsed, fields it does not
//! support are accepted only when absent, null or at Cloud Hypervisor's default, and anything
//! else is refused with an error that names the field.

use serde_json::{Map, Value};

use super::rules::{Rule, CONSOLE, CPUS, DISK, MEMORY, PAYLOAD, RNG, TOP, VSOCK};
use super::types::{
    ConsoleConfig, ConsoleMode, CpusConfig, DiskConfig, ImageType, MemoryConfig, PayloadConfig,
    VmConfig, VsockConfig,
};

/// Smallest guest memory accepted (the VMM's page tables and tables need some room).
pub const MIN_MEMORY: u64 = 2 << 20;
/// Largest guest memory accepted.
pub const MAX_MEMORY: u64 = 1 << 40;

/// Why a `VmConfig` was refused. Every variant names the field as `a.b.c`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown field `{field}`")]
    Unknown { field: String },
    #[error("field `{field}` = {value} is not supported by thinvm (only its default is accepted)")]
    Unsupported { field: String, value: String },
    #[error("field `{field}` is invalid: {reason}")]
    Invalid { field: String, reason: String },
    #[error("field `{field}` is required")]
    Missing { field: String },
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Checks an object against a table: unknown keys and non-default unsupported values fail.
pub(super) fn check<'a>(
    v: &'a Value,
    path: &str,
    table: &[(&str, Rule)],
) -> Result<&'a Map<String, Value>, ConfigError> {
    let obj = v.as_object().ok_or_else(|| ConfigError::Invalid {
        field: if path.is_empty() {
            "(body)".into()
        } else {
            path.into()
        },
        reason: format!("expected an object, got {v}"),
    })?;
    for (key, value) in obj {
        let field = join(path, key);
        let rule = table
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, r)| *r)
            .ok_or_else(|| ConfigError::Unknown {
                field: field.clone(),
            })?;
        let ok = match rule {
            Rule::Parsed => true,
            _ if value.is_null() => true,
            Rule::Null => false,
            Rule::Empty => value.as_array().is_some_and(|a| a.is_empty()),
            Rule::Bool(b) => value.as_bool() == Some(b),
            Rule::Str(s) => value.as_str() == Some(s),
            Rule::Int(n) => value.as_u64() == Some(n),
            Rule::Object(inner) => {
                check(value, &field, inner)?;
                true
            }
        };
        if !ok {
            return Err(ConfigError::Unsupported {
                field,
                value: value.to_string(),
            });
        }
    }
    Ok(obj)
}

pub(super) fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_string(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ConfigError::Invalid {
            field: join(path, key),
            reason: format!("expected a string, got {other}"),
        }),
    }
}

pub(super) fn int(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ConfigError> {
    let Some(v) = present(obj, key) else {
        return Ok(None);
    };
    let field = join(path, key);
    let n = v.as_u64().ok_or_else(|| ConfigError::Invalid {
        field: field.clone(),
        reason: format!("expected a non-negative integer, got {v}"),
    })?;
    if n < min || n > max {
        return Err(ConfigError::Invalid {
            field,
            reason: format!("{n} is outside {min}..={max}"),
        });
    }
    Ok(Some(n))
}

fn parse_cpus(v: Option<&Value>) -> Result<CpusConfig, ConfigError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(CpusConfig {
            boot_vcpus: 1,
            max_vcpus: 1,
        });
    };
    let obj = check(v, "cpus", CPUS)?;
    let boot = int(obj, "cpus", "boot_vcpus", 1, 255)?.unwrap_or(1);
    let max = int(obj, "cpus", "max_vcpus", 1, 255)?.unwrap_or(boot);
    if max != boot {
        return Err(ConfigError::Unsupported {
            field: "cpus.max_vcpus".into(),
            value: format!(
                "{max} (vCPU hotplug is not supported: it must equal boot_vcpus {boot})"
            ),
        });
    }
    // Both are within 1..=255 (checked by `int`).
    let b = u8::try_from(boot).unwrap_or(u8::MAX);
    Ok(CpusConfig {
        boot_vcpus: b,
        max_vcpus: b,
    })
}

fn parse_memory(v: Option<&Value>) -> Result<MemoryConfig, ConfigError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(MemoryConfig { size: 512 << 20 });
    };
    let obj = check(v, "memory", MEMORY)?;
    let size = int(obj, "memory", "size", MIN_MEMORY, MAX_MEMORY)?.ok_or(ConfigError::Missing {
        field: "memory.size".into(),
    })?;
    if !size.is_multiple_of(4096) {
        return Err(ConfigError::Invalid {
            field: "memory.size".into(),
            reason: format!("{size} is not a multiple of 4096"),
        });
    }
    Ok(MemoryConfig { size })
}

fn parse_console(
    v: Option<&Value>,
    field: &str,
    default: ConsoleMode,
) -> Result<ConsoleConfig, ConfigError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(ConsoleConfig {
            mode: default,
            file: None,
        });
    };
    let obj = check(v, field, CONSOLE)?;
    let mode_field = join(field, "mode");
    let mode = match present(obj, "mode").and_then(Value::as_str) {
        None => return Err(ConfigError::Missing { field: mode_field }),
        Some("Off") => ConsoleMode::Off,
        Some("Null") => ConsoleMode::Null,
        Some("Tty") => ConsoleMode::Tty,
        Some("File") if field == "serial" => ConsoleMode::File,
        Some(other) => {
            return Err(ConfigError::Unsupported {
                field: mode_field,
                value: format!("\"{other}\""),
            })
        }
    };
    let file = opt_string(obj, field, "file")?;
    if mode == ConsoleMode::File && file.is_none() {
        return Err(ConfigError::Missing {
            field: join(field, "file"),
        });
    }
    Ok(ConsoleConfig { mode, file })
}

/// Most disks per VM.
pub const MAX_DISKS: usize = 16;

fn parse_disks(v: Option<&Value>) -> Result<Vec<DiskConfig>, ConfigError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = v.as_array().ok_or_else(|| ConfigError::Invalid {
        field: "disks".into(),
        reason: format!("expected a list, got {v}"),
    })?;
    if list.len() > MAX_DISKS {
        return Err(ConfigError::Invalid {
            field: "disks".into(),
            reason: format!("{} disks: at most {MAX_DISKS}", list.len()),
        });
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let field = format!("disks[{i}]");
        let obj = check(d, &field, DISK)?;
        let path = opt_string(obj, &field, "path")?.ok_or_else(|| ConfigError::Missing {
            field: join(&field, "path"),
        })?;
        let readonly = match present(obj, "readonly") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    field: join(&field, "readonly"),
                    reason: format!("expected a boolean, got {other}"),
                })
            }
        };
        let image_type = match present(obj, "image_type").map(|t| (t, t.as_str())) {
            None | Some((_, Some("Raw"))) => ImageType::Raw,
            Some((_, Some("Qcow2"))) => ImageType::Qcow2,
            Some((t, _)) => {
                return Err(ConfigError::Unsupported {
                    field: join(&field, "image_type"),
                    value: t.to_string(),
                })
            }
        };
        out.push(DiskConfig {
            path,
            readonly,
            image_type,
        });
    }
    Ok(out)
}

/// `vsock`: `{cid, socket}`; the CID is 3 to 4294967294 (0, 1, 2 and u32::MAX are reserved).
fn parse_vsock(v: Option<&Value>) -> Result<Option<VsockConfig>, ConfigError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let obj = check(v, "vsock", VSOCK)?;
    let (lo, hi) = crate::vsock::CID_RANGE;
    let cid = int(obj, "vsock", "cid", lo, hi)?.ok_or(ConfigError::Missing {
        field: "vsock.cid".into(),
    })?;
    let socket = opt_string(obj, "vsock", "socket")?
        .filter(|s| !s.is_empty())
        .ok_or(ConfigError::Missing {
            field: "vsock.socket".into(),
        })?;
    Ok(Some(VsockConfig { cid, socket }))
}

/// Reads a Cloud Hypervisor `VmConfig` JSON body into the part thinvm supports.
pub fn parse_vm_config(v: &Value) -> Result<VmConfig, ConfigError> {
    let top = check(v, "", TOP)?;
    let payload_v = present(top, "payload").ok_or(ConfigError::Missing {
        field: "payload".into(),
    })?;
    let p = check(payload_v, "payload", PAYLOAD)?;
    let payload = PayloadConfig {
        kernel: opt_string(p, "payload", "kernel")?,
        initramfs: opt_string(p, "payload", "initramfs")?,
        cmdline: opt_string(p, "payload", "cmdline")?,
    };
    if payload.kernel.is_none() {
        return Err(ConfigError::Missing {
            field: "payload.kernel".into(),
        });
    }
    let pvpanic = match present(top, "pvpanic") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ConfigError::Invalid {
                field: "pvpanic".into(),
                reason: format!("expected a boolean, got {other}"),
            })
        }
    };
    let config = VmConfig {
        cpus: parse_cpus(top.get("cpus"))?,
        memory: parse_memory(top.get("memory"))?,
        payload,
        serial: parse_console(top.get("serial"), "serial", ConsoleMode::Null)?,
        console: parse_console(top.get("console"), "console", ConsoleMode::Tty)?,
        pvpanic,
        disks: parse_disks(top.get("disks"))?,
        balloon: super::resize::parse_balloon(present(top, "balloon"))?,
        net: net_config::parse_net(top.get("net"))?,
        rng: match present(top, "rng") {
            None => false,
            Some(r) => {
                check(r, "rng", RNG)?;
                true
            }
        },
        vsock: parse_vsock(top.get("vsock"))?,
    };
    super::resize::check_balloon_fits(&config)?;
    Ok(config)
}

#[path = "net_config.rs"]
mod net_config;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
