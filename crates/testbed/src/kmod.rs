//! Kernel modules: find them by name in an unpacked `lib/modules/<release>` tree, resolve their
//! dependencies from `.modinfo`, and produce `modules.dep` with `depmod -b`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf::{self, ElfError};

/// Errors resolving or indexing kernel modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// A requested module (or a dependency) is not in the tree.
    #[error("kernel module {name} not found under {root}")]
    NotFound {
        /// Module name (dashes and underscores are equivalent).
        name: String,
        /// The modules tree searched.
        root: PathBuf,
    },
    /// Reading the tree or a module failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A module file is not a readable ELF object.
    #[error("bad kernel module {path}: {source}")]
    Elf {
        /// The module file.
        path: PathBuf,
        /// The cause.
        source: ElfError,
    },
    /// The dependencies loop.
    #[error("kernel module dependency cycle through {0}")]
    Cycle(String),
    /// depmod failed.
    #[error("depmod -b {base} {release} failed: {detail}")]
    Depmod {
        /// The staging base.
        base: PathBuf,
        /// The kernel release.
        release: String,
        /// Exit status or spawn error.
        detail: String,
    },
}

/// Module names compare with dashes and underscores equal (`virtio-rng` is `virtio_rng`).
pub fn normalize(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

/// The fields of `.modinfo` that we use.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=` (normalized), if present.
    pub name: Option<String>,
    /// `depends=`, split on commas, normalized, empties dropped.
    pub depends: Vec<String>,
}

/// Parses a `.modinfo` section (NUL-separated `key=value` strings).
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for entry in section.split(|&b| b == 0) {
        let entry = String::from_utf8_lossy(entry);
        if let Some(v) = entry.strip_prefix("name=") {
            info.name = Some(normalize(v));
        } else if let Some(v) = entry.strip_prefix("depends=") {
            info.depends = v
                .split(',')
                .filter(|d| !d.is_empty())
                .map(normalize)
                .collect();
        }
    }
    info
}

/// One module file to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    /// Normalized module name.
    pub name: String,
    /// Path relative to `lib/modules/<release>` (e.g. `kernel/virt/lib/irqbypass.ko`).
    pub rel_path: PathBuf,
    /// Absolute path on the host.
    pub path: PathBuf,
}

/// An index of the `.ko` files under `lib/modules/<release>`.
#[derive(Debug)]
pub struct ModuleTree {
    root: PathBuf,
    by_name: BTreeMap<String, PathBuf>,
}

impl ModuleTree {
    /// Indexes every `.ko` file under `root` by its normalized file stem.
    pub fn scan(root: &Path) -> Result<Self, KmodError> {
        let mut by_name = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let io = |source| KmodError::Io {
                path: dir.clone(),
                source,
            };
            for entry in std::fs::read_dir(&dir).map_err(io)? {
                let path = entry.map_err(io)?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(stem) = path.file_name().and_then(|n| n.to_str()) {
                    if let Some(stem) = stem.strip_suffix(".ko") {
                        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                        by_name.insert(normalize(stem), rel);
                    }
                }
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            by_name,
        })
    }

    /// Resolves `names` and their dependencies, dependencies first, each once, in request order.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<KernelModule>, KmodError> {
        let mut out = Vec::new();
        for name in names {
            self.visit(&normalize(name), &mut Vec::new(), &mut out)?;
        }
        Ok(out)
    }

    fn visit(
        &self,
        name: &str,
        path_stack: &mut Vec<String>,
        out: &mut Vec<KernelModule>,
    ) -> Result<(), KmodError> {
        if out.iter().any(|m| m.name == name) {
            return Ok(());
        }
        if path_stack.iter().any(|n| n == name) {
            return Err(KmodError::Cycle(name.to_string()));
        }
        let rel = self.by_name.get(name).ok_or_else(|| KmodError::NotFound {
            name: name.to_string(),
            root: self.root.clone(),
        })?;
        let path = self.root.join(rel);
        let data = std::fs::read(&path).map_err(|source| KmodError::Io {
            path: path.clone(),
            source,
        })?;
        let section = elf::section(&data, ".modinfo").map_err(|source| KmodError::Elf {
            path: path.clone(),
            source,
        })?;
        let info = parse_modinfo(section.unwrap_or_default());
        path_stack.push(name.to_string());
        for dep in &info.depends {
            self.visit(dep, path_stack, out)?;
        }
        path_stack.pop();
        out.push(KernelModule {
            name: name.to_string(),
            rel_path: rel.clone(),
            path,
        });
        Ok(())
    }
}

/// Copies `modules` into `<base>/lib/modules/<release>/...` and runs `busybox depmod -b`.
/// Returns the generated index files (`modules.dep` and friends) as (relative name, path).
pub fn depmod(
    busybox: &Path,
    base: &Path,
    release: &str,
    modules: &[KernelModule],
) -> Result<Vec<(String, PathBuf)>, KmodError> {
    let dir = base.join("lib/modules").join(release);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KmodError::Io { path, source }
    };
    for m in modules {
        let dest = dir.join(&m.rel_path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::copy(&m.path, &dest).map_err(io(&dest))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let failed = |detail: String| KmodError::Depmod {
        base: base.to_path_buf(),
        release: release.to_string(),
        detail,
    };
    let status = Command::new(busybox)
        .arg("depmod")
        .arg("-b")
        .arg(base)
        .arg(release)
        .status()
        .map_err(|e| failed(e.to_string()))?;
    if !status.success() {
        return Err(failed(status.to_string()));
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let path = entry.map_err(io(&dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("modules.") && path.is_file() {
            files.push((name.to_string(), path.clone()));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::build_elf;

    #[test]
    fn modinfo_parsing() {
        let info = parse_modinfo(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0");
        assert_eq!(info.name.as_deref(), Some("virtio_blk"));
        assert_eq!(info.depends, vec!["virtio", "virtio_ring"]);
        let info = parse_modinfo(b"depends=\0name=virtio-rng\0");
        assert!(info.depends.is_empty());
        assert_eq!(info.name.as_deref(), Some("virtio_rng"));
        assert_eq!(parse_modinfo(b"\xff\xfe"), ModInfo::default());
    }

    fn tree(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("testbed-kmod-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let put = |rel: &str, modinfo: &[u8]| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, build_elf(&[], ".modinfo", modinfo)).unwrap();
        };
        put(
            "kernel/virt/lib/irqbypass.ko",
            b"name=irqbypass\0depends=\0",
        );
        put(
            "kernel/arch/x86/kvm/kvm.ko",
            b"name=kvm\0depends=irqbypass\0",
        );
        put(
            "kernel/arch/x86/kvm/kvm-amd.ko",
            b"name=kvm_amd\0depends=kvm\0",
        );
        put(
            "kernel/drivers/char/hw_random/virtio-rng.ko",
            b"name=virtio_rng\0",
        );
        put("kernel/loop/a.ko", b"name=a\0depends=b\0");
        put("kernel/loop/b.ko", b"name=b\0depends=a\0");
        root
    }

    #[test]
    fn resolves_dependencies_first_once() {
        let root = tree("deps");
        let t = ModuleTree::scan(&root).unwrap();
        let names: Vec<String> = ["kvm-amd", "kvm", "virtio_rng"].map(String::from).into();
        let mods = t.resolve(&names).unwrap();
        let got: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(got, ["irqbypass", "kvm", "kvm_amd", "virtio_rng"]);
        assert_eq!(
            mods[3].rel_path,
            PathBuf::from("kernel/drivers/char/hw_random/virtio-rng.ko")
        );
        assert!(matches!(
            t.resolve(&["nope".to_string()]),
            Err(KmodError::NotFound { .. })
        ));
        assert!(matches!(
            t.resolve(&["a".to_string()]),
            Err(KmodError::Cycle(_))
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn depmod_writes_modules_dep() {
        let Ok(busybox) = which("busybox") else {
            return;
        };
        let root = tree("depmod");
        let t = ModuleTree::scan(&root).unwrap();
        let mods = t.resolve(&["kvm".to_string()]).unwrap();
        let base = root.join("stage");
        let files = depmod(&busybox, &base, "9.9.9-test", &mods).unwrap();
        let dep = files.iter().find(|(n, _)| n == "modules.dep").unwrap();
        let text = std::fs::read_to_string(&dep.1).unwrap();
        assert!(text.contains("kernel/arch/x86/kvm/kvm.ko:"), "{text}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn which(name: &str) -> Result<PathBuf, ()> {
        std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
            .ok_or(())
    }
}
