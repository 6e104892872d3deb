//! Host packages and the Debian cloud kernel: downloaded once per version into the cache,
//! unpacked into a directory named by the .deb's sha256 (so never stale).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, CacheError, FileLock};
use crate::vmlinux::{self, VmlinuxError};

/// The kernel metapackage that names the current versioned cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Host packages the testbed needs, with a binary that proves each is installed.
pub const HOST_PACKAGES: [(&str, &str); 4] = [
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("cpio", "/usr/bin/cpio"),
    ("busybox-static", "/bin/busybox"),
    ("lz4", "/usr/bin/lz4"),
];

/// Errors preparing assets.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    /// Cache problem.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A command failed.
    #[error("`{cmd}` failed: {detail}")]
    Command {
        /// The command line.
        cmd: String,
        /// Exit status, stderr or spawn error.
        detail: String,
    },
    /// The package metadata could not be understood.
    #[error("cannot find the versioned kernel package: {0}")]
    Metadata(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The unpacked package does not look like a kernel package.
    #[error("unexpected kernel package layout in {0}")]
    Layout(PathBuf),
    /// Extracting the vmlinux failed.
    #[error(transparent)]
    Vmlinux(#[from] VmlinuxError),
}

/// The guest/testbed kernel files.
#[derive(Debug, Clone)]
pub struct Assets {
    /// The cache directory everything lives in.
    pub cache_dir: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
    /// The bzImage (`boot/vmlinuz-<release>`).
    pub bzimage: PathBuf,
    /// The ELF vmlinux cut out of the bzImage (has the PVH note).
    pub vmlinux: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub modules_dir: PathBuf,
    /// The static busybox of the host.
    pub busybox: PathBuf,
}

fn run(cmd: &mut Command) -> Result<String, AssetsError> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| AssetsError::Command {
        cmd: line.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(AssetsError::Command {
            cmd: line,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs (with `apt-get install -y`) the host packages whose binary is missing.
pub fn ensure_host_packages() -> Result<(), AssetsError> {
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .filter(|(_, bin)| !Path::new(bin).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!("installing host packages {missing:?}");
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing))?;
    Ok(())
}

/// Parses `Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)` into (name, version).
pub fn parse_depends(depends: &str) -> Option<(String, String)> {
    depends.split(',').find_map(|dep| {
        let dep = dep.split('|').next()?.trim();
        let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
        if !name.starts_with("linux-image-") || name == KERNEL_METAPACKAGE {
            return None;
        }
        let version = rest.trim().strip_prefix("(=")?.strip_suffix(')')?.trim();
        Some((name.to_string(), version.to_string()))
    })
}

/// The file name `apt-get download` gives a package (epoch colon escaped as `%3a`).
pub fn deb_file_name(name: &str, version: &str) -> String {
    format!("{name}_{}_amd64.deb", version.replace(':', "%3a"))
}

/// Field `field` of `apt-cache show --no-all-versions pkg` (the candidate version).
fn apt_field(pkg: &str, field: &str) -> Result<String, AssetsError> {
    let text = run(Command::new("apt-cache").args(["show", "--no-all-versions", pkg]))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}: ")).map(str::to_string))
        .ok_or_else(|| AssetsError::Metadata(format!("apt-cache show {pkg} has no {field}")))
}

/// Downloads `name=version` into `dir` unless already there; returns the file.
fn download(dir: &Path, name: &str, version: &str) -> Result<PathBuf, AssetsError> {
    let file = dir.join(deb_file_name(name, version));
    if !file.exists() {
        tracing::info!("apt-get download {name}={version}");
        run(Command::new("apt-get")
            .current_dir(dir)
            .arg("download")
            .arg(format!("{name}={version}")))?;
    }
    if !file.exists() {
        return Err(AssetsError::Metadata(format!(
            "apt-get download did not create {}",
            file.display()
        )));
    }
    Ok(file)
}

/// The most recently downloaded metapackage in `dir`, if any.
fn newest_cached_meta(dir: &Path) -> Option<PathBuf> {
    let prefix = format!("{KERNEL_METAPACKAGE}_");
    let newest = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()?;
    tracing::warn!(
        "apt-cache has no {KERNEL_METAPACKAGE}: using cached {}",
        newest.1.display()
    );
    Some(newest.1)
}

impl Assets {
    /// Ensures host packages, the kernel package (downloaded once) and the vmlinux.
    pub fn ensure(cache_dir: &Path) -> Result<Self, AssetsError> {
        ensure_host_packages()?;
        let debs = cache_dir.join("debs");
        cache::ensure_dir(&debs)?;
        let _lock = FileLock::acquire(&cache_dir.join("assets.lock"))?;
        let meta = match apt_field(KERNEL_METAPACKAGE, "Version") {
            Ok(version) => download(&debs, KERNEL_METAPACKAGE, &version)?,
            // No apt lists (offline, no `apt-get update`): use the newest cached metapackage.
            Err(e) => newest_cached_meta(&debs).ok_or(e)?,
        };
        let depends = run(Command::new("dpkg-deb").arg("-f").arg(&meta).arg("Depends"))?;
        let (name, version) = parse_depends(&depends).ok_or_else(|| {
            AssetsError::Metadata(format!("no versioned kernel in `{}`", depends.trim()))
        })?;
        let deb = download(&debs, &name, &version)?;
        let sha = cache::file_sha256(&deb)?;
        let root = cache_dir.join("kernel").join(sha.get(..16).unwrap_or(&sha));
        if !root.join(".complete").exists() {
            unpack(&deb, &root)?;
        }
        Self::from_unpacked(cache_dir, &root)
    }

    /// Ensures the assets in the default cache directory.
    pub fn ensure_default() -> Result<Self, AssetsError> {
        Self::ensure(&cache::default_cache_dir()?)
    }

    fn from_unpacked(cache_dir: &Path, root: &Path) -> Result<Self, AssetsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AssetsError::Io { path, source }
        };
        let mods = root.join("lib/modules");
        let mut releases = Vec::new();
        for e in std::fs::read_dir(&mods).map_err(io(&mods))? {
            releases.push(
                e.map_err(io(&mods))?
                    .file_name()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        let [release] = releases.as_slice() else {
            return Err(AssetsError::Layout(root.to_path_buf()));
        };
        let bzimage = root.join("boot").join(format!("vmlinuz-{release}"));
        if !bzimage.is_file() {
            return Err(AssetsError::Layout(root.to_path_buf()));
        }
        let vmlinux = root.join("vmlinux");
        if vmlinux::check(&vmlinux).is_err() {
            vmlinux::extract(&bzimage, &vmlinux)?;
        }
        Ok(Self {
            cache_dir: cache_dir.to_path_buf(),
            kernel_release: release.clone(),
            bzimage,
            vmlinux,
            modules_dir: mods.join(release),
            busybox: PathBuf::from(HOST_PACKAGES[2].1),
        })
    }
}

/// `dpkg-deb -x` into a temporary directory, then renamed into place with a stamp.
fn unpack(deb: &Path, root: &Path) -> Result<(), AssetsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AssetsError::Io { path, source }
    };
    let tmp = root.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    if let Some(parent) = root.parent() {
        cache::ensure_dir(parent)?;
    }
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    std::fs::write(tmp.join(".complete"), b"").map_err(io(&tmp))?;
    let _ = std::fs::remove_dir_all(root);
    std::fs::rename(&tmp, root).map_err(io(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_parsing() {
        assert_eq!(
            parse_depends("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n"),
            Some((
                "linux-image-6.1.0-56-cloud-amd64".into(),
                "6.1.192-2".into()
            ))
        );
        assert_eq!(
            parse_depends("foo, linux-image-6.1.0-9-cloud-amd64 (= 1:6.1-1) | bar"),
            Some(("linux-image-6.1.0-9-cloud-amd64".into(), "1:6.1-1".into()))
        );
        assert_eq!(parse_depends("linux-image-6.1.0-56-cloud-amd64"), None);
        assert_eq!(parse_depends(""), None);
    }

    #[test]
    fn deb_names() {
        assert_eq!(deb_file_name("a", "1:2-3"), "a_1%3a2-3_amd64.deb");
        assert_eq!(
            deb_file_name("linux-image-cloud-amd64", "6.1.192-2"),
            "linux-image-cloud-amd64_6.1.192-2_amd64.deb"
        );
    }
}
