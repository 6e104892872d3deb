//! The outer machine's initramfs, in layers that the kernel unpacks one after another
//! (concatenated gzip cpio archives): a base (busybox, KVM modules, guest kernel and initramfs,
//! optional QEMU), the VMM under test, and the scenarios of one run.

use std::path::{Path, PathBuf};

use crate::assets::Assets;
use crate::cpio::{Archive, Source};
use crate::images::{self, check_name, ImageError, Script};

/// Modules the outer machine loads by default (dependencies come along).
pub const DEFAULT_OUTER_MODULES: [&str; 3] = ["irqbypass", "kvm", "kvm_amd"];
/// The host QEMU binary (also the inner QEMU when shipped).
pub const QEMU_BINARY: &str = "/usr/bin/qemu-system-x86_64";
/// Firmware the inner QEMU needs for `-M pc` and `-M microvm` with `-kernel`.
pub const QEMU_FIRMWARE: [&str; 4] = [
    "bios-256k.bin",
    "linuxboot_dma.bin",
    "kvmvapic.bin",
    "bios-microvm.bin",
];
/// Where QEMU looks for firmware on the host (`qemu-system-x86_64 -L help`).
pub const QEMU_FIRMWARE_DIRS: [&str; 3] = [
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/lib/ipxe/qemu",
];

/// Paths inside the outer machine (also exported to scenario scripts by /etc/thinvm-env).
pub mod paths {
    /// The VMM under test.
    pub const THINVM: &str = "/usr/bin/thinvm";
    /// The inner QEMU, when shipped.
    pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
    /// The guest bzImage.
    pub const GUEST_BZIMAGE: &str = "/guest/bzImage";
    /// The guest ELF vmlinux (PVH).
    pub const GUEST_VMLINUX: &str = "/guest/vmlinux";
    /// The guest initramfs.
    pub const GUEST_INITRD: &str = "/guest/initrd.cpio.gz";
}

/// What goes into the outer machine.
#[derive(Debug, Clone)]
pub struct OuterSpec {
    /// Outer kernel modules to load, in order (default: irqbypass, kvm, kvm_amd).
    pub modules: Vec<String>,
    /// Ship QEMU (binary, libraries, firmware) as `$QEMU`.
    pub with_qemu: bool,
    /// The thinvm binary to ship as `$THINVM` (libraries copied as `ldd` lists them).
    pub thinvm: Option<PathBuf>,
    /// More host binaries, shipped at the same path with their libraries.
    pub extra_binaries: Vec<PathBuf>,
    /// More host files as (host path, absolute path in the outer machine), e.g. a user's own
    /// kernel and initramfs for an interactive run.
    pub extra_files: Vec<(PathBuf, String)>,
}

impl Default for OuterSpec {
    fn default() -> Self {
        Self {
            modules: DEFAULT_OUTER_MODULES.map(String::from).into(),
            with_qemu: false,
            thinvm: None,
            extra_binaries: Vec::new(),
            extra_files: Vec::new(),
        }
    }
}

fn env_file(assets: &Assets) -> String {
    format!(
        "KERNEL_RELEASE={}\nTHINVM={}\nQEMU={}\nGUEST_BZIMAGE={}\nGUEST_VMLINUX={}\nGUEST_INITRD={}\n",
        assets.kernel_release,
        paths::THINVM,
        paths::QEMU,
        paths::GUEST_BZIMAGE,
        paths::GUEST_VMLINUX,
        paths::GUEST_INITRD
    )
}

fn find_firmware(name: &str) -> Result<PathBuf, ImageError> {
    QEMU_FIRMWARE_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or_else(|| ImageError::Missing {
            what: "QEMU firmware",
            path: PathBuf::from(name),
        })
}

/// The base layer: busybox, outer modules, /init, the measuring wrapper, the guest kernel and
/// initramfs, and QEMU if asked for.
pub fn base_layer(
    assets: &Assets,
    spec: &OuterSpec,
    guest_initrd: &Path,
) -> Result<PathBuf, ImageError> {
    let mut a = Archive::new();
    images::add_busybox(&mut a, &assets.busybox)?;
    images::add_modules(&mut a, assets, &spec.modules)?;
    a.file(
        "init",
        Source::Bytes(include_bytes!("../outer/init.sh").to_vec()),
        0o755,
    );
    let measure = include_bytes!("../outer/measure.sh").to_vec();
    a.file("bin/thinvm-measure", Source::Bytes(measure), 0o755);
    a.file(
        "etc/thinvm-env",
        Source::Bytes(env_file(assets).into_bytes()),
        0o644,
    );
    a.file(
        paths::GUEST_BZIMAGE,
        Source::Path(assets.bzimage.clone()),
        0o644,
    );
    a.file(
        paths::GUEST_VMLINUX,
        Source::Path(assets.vmlinux.clone()),
        0o644,
    );
    a.file(
        paths::GUEST_INITRD,
        Source::Path(guest_initrd.to_path_buf()),
        0o644,
    );
    if spec.with_qemu {
        images::add_binary(&mut a, Path::new(QEMU_BINARY), paths::QEMU)?;
        for fw in QEMU_FIRMWARE {
            a.file(
                &format!("usr/share/qemu/{fw}"),
                Source::Path(find_firmware(fw)?),
                0o644,
            );
        }
    }
    images::cached(&a, "outer-base", &assets.cache_dir)
}

/// The VMM layer: thinvm and the extra binaries with their libraries, and the extra files
/// (None if there is nothing to ship).
pub fn vmm_layer(assets: &Assets, spec: &OuterSpec) -> Result<Option<PathBuf>, ImageError> {
    let mut a = Archive::new();
    if let Some(thinvm) = &spec.thinvm {
        images::add_binary(&mut a, thinvm, paths::THINVM)?;
    }
    for bin in &spec.extra_binaries {
        images::add_binary(&mut a, bin, &bin.to_string_lossy())?;
    }
    for (host, dest) in &spec.extra_files {
        if !host.is_file() {
            let path = host.clone();
            return Err(ImageError::Missing {
                what: "file for the outer machine",
                path,
            });
        }
        a.file(dest, Source::Path(host.clone()), 0o644);
    }
    if spec.thinvm.is_none() && spec.extra_binaries.is_empty() && spec.extra_files.is_empty() {
        return Ok(None);
    }
    images::cached(&a, "outer-vmm", &assets.cache_dir).map(Some)
}

/// One scenario script in the outer machine, run with a timeout in seconds.
#[derive(Debug, Clone)]
pub struct LayerScenario {
    /// The script (its name is the scenario name).
    pub script: Script,
    /// Timeout in whole seconds (at least 1).
    pub timeout_secs: u64,
}

/// The per-run layer: `/scenarios/NAME.sh`, `/scenarios/list`, and for an interactive run
/// `/etc/thinvm-interactive` plus `/scenarios/interactive.sh`.
pub fn scenario_archive(
    scenarios: &[LayerScenario],
    interactive: Option<&str>,
) -> Result<Archive, ImageError> {
    let mut a = Archive::new();
    let mut list = String::new();
    for s in scenarios {
        check_name(&s.script.name)?;
        let body = s.script.body.clone().into_bytes();
        a.file(
            &format!("scenarios/{}.sh", s.script.name),
            Source::Bytes(body),
            0o755,
        );
        list.push_str(&format!("{} {}\n", s.script.name, s.timeout_secs.max(1)));
    }
    a.file("scenarios/list", Source::Bytes(list.into_bytes()), 0o644);
    if let Some(script) = interactive {
        a.file(
            "scenarios/interactive.sh",
            Source::Bytes(script.as_bytes().to_vec()),
            0o755,
        );
        a.file("etc/thinvm-interactive", Source::Bytes(Vec::new()), 0o644);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_layer_lists_names_and_timeouts() {
        let s = |n: &str, t| LayerScenario {
            script: Script::new(n, "echo hi\n"),
            timeout_secs: t,
        };
        let a = scenario_archive(&[s("one", 30), s("two", 0)], None).unwrap();
        let mut buf = Vec::new();
        a.write_newc(&mut buf, Path::new("mem")).unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("one 30\ntwo 1\n"), "{text}");
        assert!(a.contains("scenarios/one.sh") && a.contains("scenarios/two.sh"));
        assert!(!a.contains("etc/thinvm-interactive"));
        let a = scenario_archive(&[], Some("exec true\n")).unwrap();
        assert!(a.contains("etc/thinvm-interactive") && a.contains("scenarios/interactive.sh"));
        assert!(scenario_archive(&[s("../x", 5)], None).is_err());
    }

    #[test]
    fn vmm_layer_ships_extra_files_and_refuses_missing_ones() {
        let dir = std::env::temp_dir().join(format!("testbed-vmm-layer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let assets = Assets {
            cache_dir: dir.clone(),
            kernel_release: "r".into(),
            bzimage: PathBuf::new(),
            vmlinux: PathBuf::new(),
            modules_dir: PathBuf::new(),
            busybox: PathBuf::new(),
        };
        assert!(vmm_layer(&assets, &OuterSpec::default()).unwrap().is_none());
        let kernel = dir.join("my-kernel");
        std::fs::write(&kernel, b"kernel bytes").unwrap();
        let mut spec = OuterSpec::default();
        spec.extra_files.push((kernel, "/user/kernel".into()));
        let layer = vmm_layer(&assets, &spec).unwrap().unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&layer)
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("user/kernel") && text.contains("kernel bytes"),
            "{text}"
        );
        spec.extra_files.push((dir.join("missing"), "/x".into()));
        let err = vmm_layer(&assets, &spec).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn qemu_firmware_is_on_this_host() {
        if Path::new(QEMU_BINARY).exists() {
            for fw in QEMU_FIRMWARE {
                assert!(find_firmware(fw).is_ok(), "{fw}");
            }
        }
        assert!(find_firmware("no-such-firmware.bin").is_err());
    }
}
