//! Building the guest and outer initramfs images, cached by a sha256 of their contents.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::assets::Assets;
use crate::cache::{self, CacheError};
use crate::cpio::{Archive, CpioError, Source};
use crate::kmod::{self, KmodError, ModuleTree};
use crate::ldd::{self, LddError};

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Module resolution or depmod failed.
    #[error(transparent)]
    Kmod(#[from] KmodError),
    /// Writing the archive failed.
    #[error(transparent)]
    Cpio(#[from] CpioError),
    /// Cache problem.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Library listing failed.
    #[error(transparent)]
    Ldd(#[from] LddError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A script or scenario name is not `[A-Za-z0-9][A-Za-z0-9._-]*`.
    #[error("bad name {0:?}: use letters, digits, '.', '_' and '-'")]
    BadName(String),
    /// A file to ship is missing.
    #[error("{what} not found: {path}")]
    Missing {
        /// What it is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// `busybox --list` failed.
    #[error("cannot list busybox applets of {path}: {detail}")]
    Busybox {
        /// The busybox binary.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

/// A named shell script shipped in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Name without `.sh`.
    pub name: String,
    /// Script text.
    pub body: String,
}

impl Script {
    /// A script.
    pub fn new(name: &str, body: &str) -> Self {
        Self {
            name: name.into(),
            body: body.into(),
        }
    }
}

/// Checks a script or scenario name.
pub fn check_name(name: &str) -> Result<(), ImageError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    match name.chars().next() {
        Some(c) if c.is_ascii_alphanumeric() && name.chars().all(ok_char) => Ok(()),
        _ => Err(ImageError::BadName(name.into())),
    }
}

/// The guest test scripts shipped with the testbed (`thinvm.test=NAME` runs `/tests/NAME.sh`).
pub fn builtin_guest_tests() -> Vec<Script> {
    vec![
        Script::new("info", include_str!("../guest/tests/info.sh")),
        Script::new("reboot", include_str!("../guest/tests/reboot.sh")),
        Script::new("panic", include_str!("../guest/tests/panic.sh")),
        Script::new(
            "acpi-poweroff",
            include_str!("../guest/tests/acpi-poweroff.sh"),
        ),
        Script::new("bench", include_str!("../guest/tests/bench.sh")),
        Script::new(
            "power-button",
            include_str!("../guest/tests/power-button.sh"),
        ),
    ]
}

/// What goes into the guest initramfs.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Kernel modules loaded (with their dependencies) by /init, in this order.
    pub modules: Vec<String>,
    /// Scripts for /tests.
    pub tests: Vec<Script>,
    /// More host binaries (e.g. `/usr/bin/socat`), shipped at the same path with the libraries
    /// `ldd` lists; their contents are part of the initramfs's cache key like every entry.
    pub binaries: Vec<PathBuf>,
}

impl Default for GuestSpec {
    fn default() -> Self {
        Self {
            modules: Vec::new(),
            tests: builtin_guest_tests(),
            binaries: Vec::new(),
        }
    }
}

/// Adds busybox with a symlink per applet, the console node and the usual directories.
pub fn add_busybox(a: &mut Archive, busybox: &Path) -> Result<(), ImageError> {
    let bb_err = |detail: String| ImageError::Busybox {
        path: busybox.to_path_buf(),
        detail,
    };
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| bb_err(e.to_string()))?;
    if !out.status.success() {
        return Err(bb_err(out.status.to_string()));
    }
    a.file("bin/busybox", Source::Path(busybox.to_path_buf()), 0o755);
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if check_name(applet).is_ok() && applet != "busybox" {
            a.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    for dir in [
        "dev", "proc", "sys", "tmp", "run", "etc", "sbin", "usr/bin", "usr/sbin",
    ] {
        a.dir(dir);
    }
    a.char_dev("dev/console", 0o600, 5, 1);
    a.char_dev("dev/null", 0o666, 1, 3);
    Ok(())
}

/// Adds `names` (and dependencies) under lib/modules, with depmod's index files, and
/// `/etc/thinvm-modules` listing `names` for /init to modprobe.
pub fn add_modules(a: &mut Archive, assets: &Assets, names: &[String]) -> Result<(), ImageError> {
    let rel = assets.kernel_release.as_str();
    let modules = ModuleTree::scan(&assets.modules_dir)?.resolve(names)?;
    let unique = format!("{}-{}", std::process::id(), cache::hex(&rand_bytes()));
    let stage = assets
        .cache_dir
        .join("tmp")
        .join(format!("depmod-{unique}"));
    let files = kmod::depmod(&assets.busybox, &stage, rel, &modules);
    let read = files.and_then(|files| {
        files
            .into_iter()
            .map(|(name, path)| {
                std::fs::read(&path)
                    .map(|b| (name, b))
                    .map_err(|source| KmodError::Io { path, source })
            })
            .collect::<Result<Vec<_>, _>>()
    });
    let _ = std::fs::remove_dir_all(&stage);
    for (name, bytes) in read? {
        a.file(
            &format!("lib/modules/{rel}/{name}"),
            Source::Bytes(bytes),
            0o644,
        );
    }
    for m in &modules {
        let dest = format!("lib/modules/{rel}/{}", m.rel_path.display());
        a.file(&dest, Source::Path(m.path.clone()), 0o644);
    }
    let list: String = names.iter().map(|n| format!("{n}\n")).collect();
    a.file(
        "etc/thinvm-modules",
        Source::Bytes(list.into_bytes()),
        0o644,
    );
    Ok(())
}

fn rand_bytes() -> [u8; 8] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    (t as u64).to_le_bytes()
}

/// Adds a host binary at `dest` and every library `ldd` lists at its own absolute path.
pub fn add_binary(a: &mut Archive, host: &Path, dest: &str) -> Result<(), ImageError> {
    if !host.is_file() {
        return Err(ImageError::Missing {
            what: "binary",
            path: host.to_path_buf(),
        });
    }
    a.file(dest, Source::Path(host.to_path_buf()), 0o755);
    for lib in ldd::libraries(host)? {
        a.file(&lib.to_string_lossy(), Source::Path(lib.clone()), 0o755);
    }
    Ok(())
}

/// Writes `a` to `<cache>/initramfs/<domain>-<key>.cpio.gz` unless that file already exists.
pub fn cached(a: &Archive, domain: &str, cache_dir: &Path) -> Result<PathBuf, ImageError> {
    let key = a.key(domain)?;
    let dir = cache_dir.join("initramfs");
    cache::ensure_dir(&dir)?;
    let path = dir.join(format!(
        "{domain}-{}.cpio.gz",
        key.get(..20).unwrap_or(&key)
    ));
    if path.exists() {
        cache::touch(&path);
    } else {
        tracing::info!("building {}", path.display());
        a.write_gz(&path)?;
        // Keep the few most recently used images of this kind (e.g. one per thinvm build).
        cache::prune(&dir, &format!("{domain}-"), 4);
    }
    Ok(path)
}

/// Builds (or finds in the cache) the guest initramfs.
pub fn build_guest(assets: &Assets, spec: &GuestSpec) -> Result<PathBuf, ImageError> {
    let mut a = Archive::new();
    add_busybox(&mut a, &assets.busybox)?;
    add_modules(&mut a, assets, &spec.modules)?;
    for bin in &spec.binaries {
        add_binary(&mut a, bin, &bin.to_string_lossy())?;
    }
    a.file(
        "init",
        Source::Bytes(include_bytes!("../guest/init.sh").to_vec()),
        0o755,
    );
    for t in &spec.tests {
        check_name(&t.name)?;
        a.file(
            &format!("tests/{}.sh", t.name),
            Source::Bytes(t.body.clone().into_bytes()),
            0o755,
        );
    }
    cached(&a, "guest", &assets.cache_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["info", "acpi-poweroff", "a.b_c", "2vcpu"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".hidden", "a/b", "a b", "x;rm", "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builtin_tests_have_valid_names_and_power_off_or_reboot() {
        for t in builtin_guest_tests() {
            check_name(&t.name).unwrap();
            assert!(t.body.starts_with("#!/bin/sh"), "{}", t.name);
        }
    }

    #[test]
    fn binary_brings_its_libraries() {
        let mut a = Archive::new();
        add_binary(&mut a, Path::new("/bin/sh"), "bin/sh").unwrap();
        assert!(a.contains("bin/sh"));
        let libs = ldd::libraries(Path::new("/bin/sh")).unwrap();
        assert!(!libs.is_empty());
        for lib in libs {
            assert!(a.contains(&lib.to_string_lossy()), "{}", lib.display());
        }
        let err = add_binary(&mut a, Path::new("/nonexistent/vmm"), "bin/x").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmm"), "{err}");
    }
}
