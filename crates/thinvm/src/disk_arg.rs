//! `--disk path=FILE[,format=raw|qcow2][,readonly=on][,serial=ID]` and `--rng`: the virtio devices of
//! `thinvm run`.
//!
//! The format is what the user says (raw when not said), never probed from the file: a guest
//! could write a qcow2 header into a raw disk. Disks get PCI slots in command-line order, then
//! the rng (off unless `--rng` is given, so a plain `thinvm run` keeps its small device set).

use std::path::PathBuf;

use vmm::{DiskConfig, Vm};

/// Parses one `--disk` value.
pub fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut path: Option<PathBuf> = None;
    let mut format: Option<storage::Format> = None;
    let mut read_only: Option<bool> = None;
    let mut serial: Option<String> = None;
    for part in s.split(',') {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            format!(
                "`{part}` is not KEY=VALUE (expected path=FILE[,format=raw|qcow2][,readonly=on])"
            )
        })?;
        let dup = || format!("`{key}` is given twice");
        match key {
            "path" if path.is_some() => return Err(dup()),
            "path" if value.is_empty() => return Err("path= is empty".into()),
            "path" => path = Some(PathBuf::from(value)),
            "format" if format.is_some() => return Err(dup()),
            "format" => {
                format = Some(match value {
                    "raw" => storage::Format::Raw,
                    "qcow2" => storage::Format::Qcow2,
                    _ => return Err(format!("format `{value}` is not supported (raw or qcow2)")),
                })
            }
            "readonly" if read_only.is_some() => return Err(dup()),
            "readonly" => {
                read_only = Some(match value {
                    "on" | "true" => true,
                    "off" | "false" => false,
                    _ => return Err(format!("readonly=`{value}`: use on or off")),
                })
            }
            "serial" if serial.is_some() => return Err(dup()),
            "serial" if value.len() > 20 || !value.chars().all(|c| c.is_ascii_graphic()) => {
                return Err(format!(
                    "serial `{value}`: at most 20 printable ASCII characters, no spaces"
                ))
            }
            "serial" => serial = Some(value.to_string()),
            _ => {
                return Err(format!(
                    "unknown disk option `{key}` (path, format, readonly, serial)"
                ))
            }
        }
    }
    Ok(DiskConfig {
        path: path.ok_or("path=FILE is missing")?,
        format: format.unwrap_or(storage::Format::Raw),
        read_only: read_only.unwrap_or(false),
        serial,
    })
}

/// Adds the disks, in order, then the rng if asked for.
pub fn attach(vm: &mut Vm, disks: &[DiskConfig], rng: bool) -> Result<(), vmm::Error> {
    for d in disks {
        vm.pci().add_disk(d)?;
    }
    if rng {
        vm.pci().add_rng()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_minimal_specs() {
        let d = parse_disk("path=/img/a.qcow2,format=qcow2,readonly=on").unwrap();
        assert_eq!(d.path, PathBuf::from("/img/a.qcow2"));
        assert_eq!(d.format, storage::Format::Qcow2);
        assert!(d.read_only);
        let d = parse_disk("path=b.img").unwrap();
        assert_eq!((d.format, d.read_only), (storage::Format::Raw, false));
        let d = parse_disk("readonly=off,format=raw,path=c").unwrap();
        assert_eq!(d.path, PathBuf::from("c"));
        assert_eq!(d.serial, None);
        let d = parse_disk("path=c,serial=DISK-01").unwrap();
        assert_eq!(d.serial.as_deref(), Some("DISK-01"));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, want) in [
            ("/img/a.raw", "not KEY=VALUE"),
            ("format=raw", "path=FILE is missing"),
            ("path=", "empty"),
            ("path=a,path=b", "twice"),
            ("path=a,format=vmdk", "vmdk"),
            ("path=a,readonly=yes", "on or off"),
            ("path=a,cache=none", "unknown disk option `cache`"),
            ("path=a,,", "not KEY=VALUE"),
            ("path=a,serial=123456789012345678901", "at most 20"),
            ("path=a,serial=a b", "at most 20"),
        ] {
            let err = parse_disk(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }
}
