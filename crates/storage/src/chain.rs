//! Opening images by format, with their backing chains: backing names resolved against the
//! overlay's folder, formats taken from the image (never probed), cycles, depth and allowed
//! folders enforced.

use std::path::{Path, PathBuf};

use crate::backend::BlockBackend;
use crate::file::{HostFile, OpenFileError};
use crate::formats::qcow2::{Qcow2, Qcow2Error, Qcow2Options};
use crate::formats::raw::Raw;
use crate::formats::vhd::Vhd;
use crate::formats::vhdx::Vhdx;

/// Image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Raw file.
    Raw,
    /// qcow2 v2/v3.
    Qcow2,
    /// VHD ("vpc"), read-only.
    Vhd,
    /// VHDX, read-only.
    Vhdx,
}

impl Format {
    /// Parses a format name as QEMU spells it.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            "vpc" | "vhd" => Some(Format::Vhd),
            "vhdx" => Some(Format::Vhdx),
            _ => None,
        }
    }

    /// The format's name as QEMU spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vpc",
            Format::Vhdx => "vhdx",
        }
    }
}

/// Error opening an image or one of its backing files.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The host file could not be opened or locked.
    #[error(transparent)]
    File(#[from] OpenFileError),
    /// A qcow2 image is unusable.
    #[error("qcow2 image {path}")]
    Qcow2 {
        /// Image path.
        path: PathBuf,
        /// Why.
        #[source]
        source: Qcow2Error,
    },
    /// A backing file is named without its format (thinvm never probes a backing file).
    #[error("{path}: backing file {backing:?} has no recorded format (recreate the overlay with a backing format)")]
    NoBackingFormat {
        /// Overlay path.
        path: PathBuf,
        /// The backing name.
        backing: String,
    },
    /// A format name thinvm does not know.
    #[error("{path}: unknown image format {name:?}")]
    UnknownFormat {
        /// Image path.
        path: PathBuf,
        /// The format name.
        name: String,
    },
    /// A backing file name that is a protocol or `json:` name.
    #[error("{path}: backing name {name:?} is a protocol or json: name; only plain file names are accepted")]
    ProtocolName {
        /// Overlay path.
        path: PathBuf,
        /// The backing name.
        name: String,
    },
    /// The chain comes back to an image already in it.
    #[error("backing chain cycle: {path} is already in the chain")]
    Cycle {
        /// The repeated image.
        path: PathBuf,
    },
    /// The chain is deeper than allowed.
    #[error("{path}: backing chain deeper than {max} images")]
    TooDeep {
        /// The image where the limit was hit.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// A chain member lies outside every allowed folder.
    #[error("{path} (really {real}) is outside the allowed folders")]
    NotAllowed {
        /// The path as named.
        path: PathBuf,
        /// Its canonical path.
        real: PathBuf,
    },
    /// A VHD image is unusable.
    #[error("VHD image {path}")]
    Vhd {
        /// Image path.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::formats::vhd::VhdError,
    },
    /// A VHDX image is unusable.
    #[error("VHDX image {path}")]
    Vhdx {
        /// Image path.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::formats::vhdx::VhdxError,
    },
    /// A read-only format opened for writing.
    #[error("{path}: {format} images are read-only in thinvm (convert them first)")]
    ReadOnlyFormat {
        /// Image path.
        path: PathBuf,
        /// Format name.
        format: &'static str,
    },
    /// The path cannot be resolved.
    #[error("cannot resolve {path}")]
    Resolve {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Probing the format failed.
    #[error("cannot read {path} to detect its format")]
    Probe {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How to open an image chain.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open the top image for writing (backing files are always read-only).
    pub writable: bool,
    /// O_DIRECT for raw files.
    pub direct: bool,
    /// When set, every chain member's real path must be under one of these folders.
    pub allowed_dirs: Option<Vec<PathBuf>>,
    /// Maximum images in a chain.
    pub max_depth: usize,
    /// L2 cache size per qcow2 image.
    pub l2_cache_bytes: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            writable: false,
            direct: false,
            allowed_dirs: None,
            max_depth: 64,
            l2_cache_bytes: 4 << 20,
        }
    }
}

/// Guesses the format from the content. For the CLI only: a managed disk's format is stored,
/// never probed (a guest could write a qcow2 header into a raw disk).
pub fn probe_format(path: &Path) -> Result<Format, OpenError> {
    use std::os::unix::fs::FileExt;
    let probe_err = |source| OpenError::Probe {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(probe_err)?;
    let mut head = [0u8; 8];
    let n = f.read_at(&mut head, 0).map_err(probe_err)?;
    if n >= 4 && head[..4] == *b"QFI\xfb" {
        return Ok(Format::Qcow2);
    }
    if n == 8 && head == *b"vhdxfile" {
        return Ok(Format::Vhdx);
    }
    if n == 8 && head == *b"conectix" {
        return Ok(Format::Vhd);
    }
    let len = f.metadata().map_err(probe_err)?.len();
    if len >= 512 {
        let mut tail = [0u8; 8];
        f.read_exact_at(&mut tail, len - 512).map_err(probe_err)?;
        if tail == *b"conectix" {
            return Ok(Format::Vhd);
        }
    }
    Ok(Format::Raw)
}

/// Whether a backing name is a protocol (`nbd:`, `http://`) or `json:` name.
fn is_protocol_name(name: &str) -> bool {
    match name.split_once(':') {
        Some((prefix, _)) => {
            !prefix.is_empty()
                && !prefix.contains('/')
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        None => false,
    }
}

/// Opens the image at `path` in `format`, with its whole backing chain.
pub fn open_image(
    path: &Path,
    format: Format,
    opts: &OpenOptions,
) -> Result<Box<dyn BlockBackend>, OpenError> {
    let mut seen = Vec::new();
    open_member(path, format, opts.writable, opts, &mut seen)
}

/// Opens a qcow2 image with its chain, as the concrete type (for check, info and commit).
pub fn open_qcow2(path: &Path, opts: &OpenOptions) -> Result<Qcow2, OpenError> {
    let mut seen = Vec::new();
    admit(path, opts, &mut seen)?;
    open_qcow2_member(path, opts.writable, opts, &mut seen)
}

fn admit(path: &Path, opts: &OpenOptions, seen: &mut Vec<PathBuf>) -> Result<(), OpenError> {
    let real = std::fs::canonicalize(path).map_err(|source| OpenError::Resolve {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(dirs) = &opts.allowed_dirs {
        let ok = dirs
            .iter()
            .any(|d| std::fs::canonicalize(d).is_ok_and(|d| real.starts_with(d)));
        if !ok {
            return Err(OpenError::NotAllowed {
                path: path.to_path_buf(),
                real,
            });
        }
    }
    if seen.contains(&real) {
        return Err(OpenError::Cycle { path: real });
    }
    if seen.len() >= opts.max_depth {
        return Err(OpenError::TooDeep {
            path: path.to_path_buf(),
            max: opts.max_depth,
        });
    }
    seen.push(real);
    Ok(())
}

/// Opens a chain member and checks, on the descriptor actually opened, that it lies under an
/// allowed folder (a rename or symlink swap after [`admit`] cannot move it out).
fn open_host(
    path: &Path,
    writable: bool,
    direct: bool,
    opts: &OpenOptions,
) -> Result<HostFile, OpenError> {
    use std::os::unix::io::AsRawFd;
    let f = HostFile::open(path, writable, direct)?;
    if let Some(dirs) = &opts.allowed_dirs {
        let link = PathBuf::from(format!("/proc/self/fd/{}", f.file().as_raw_fd()));
        let real = std::fs::read_link(&link).map_err(|source| OpenError::Resolve {
            path: path.to_path_buf(),
            source,
        })?;
        let ok = dirs
            .iter()
            .any(|d| std::fs::canonicalize(d).is_ok_and(|d| real.starts_with(d)));
        if !ok {
            return Err(OpenError::NotAllowed {
                path: path.to_path_buf(),
                real,
            });
        }
    }
    Ok(f)
}

fn open_member(
    path: &Path,
    format: Format,
    writable: bool,
    opts: &OpenOptions,
    seen: &mut Vec<PathBuf>,
) -> Result<Box<dyn BlockBackend>, OpenError> {
    admit(path, opts, seen)?;
    match format {
        Format::Raw => {
            let f = open_host(path, writable, opts.direct, opts)?;
            let raw = Raw::from_file(Box::new(f), !writable).map_err(|e| OpenError::Resolve {
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
            Ok(Box::new(raw))
        }
        Format::Qcow2 => Ok(Box::new(open_qcow2_member(path, writable, opts, seen)?)),
        Format::Vhd | Format::Vhdx if writable => Err(OpenError::ReadOnlyFormat {
            path: path.to_path_buf(),
            format: format.name(),
        }),
        Format::Vhd => {
            let f = Box::new(open_host(path, false, false, opts)?);
            let v = Vhd::open(f).map_err(|source| OpenError::Vhd {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(Box::new(v))
        }
        Format::Vhdx => {
            let f = Box::new(open_host(path, false, false, opts)?);
            let v = Vhdx::open(f).map_err(|source| OpenError::Vhdx {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(Box::new(v))
        }
    }
}

fn open_qcow2_member(
    path: &Path,
    writable: bool,
    opts: &OpenOptions,
    seen: &mut Vec<PathBuf>,
) -> Result<Qcow2, OpenError> {
    let file = open_host(path, writable, opts.direct, opts)?;
    let qopts = Qcow2Options {
        writable,
        l2_cache_bytes: opts.l2_cache_bytes,
    };
    let mut q = Qcow2::open(Box::new(file), qopts).map_err(|source| OpenError::Qcow2 {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(name) = q.header().backing_file.clone() {
        let fmt_name =
            q.header()
                .backing_format
                .clone()
                .ok_or_else(|| OpenError::NoBackingFormat {
                    path: path.to_path_buf(),
                    backing: name.clone(),
                })?;
        if name.starts_with("json:") || is_protocol_name(&name) {
            return Err(OpenError::ProtocolName {
                path: path.to_path_buf(),
                name,
            });
        }
        let fmt = Format::from_name(&fmt_name).ok_or_else(|| OpenError::UnknownFormat {
            path: path.to_path_buf(),
            name: fmt_name.clone(),
        })?;
        let bpath = resolve_backing(path, &name);
        let b = open_member(&bpath, fmt, false, opts, seen)?;
        q.set_backing(b);
    }
    Ok(q)
}

/// Resolves a backing name: relative names are relative to the overlay's folder.
pub fn resolve_backing(overlay: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    overlay.parent().unwrap_or(Path::new(".")).join(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names() {
        assert!(is_protocol_name("nbd:localhost:10809"));
        assert!(is_protocol_name("http://example/x.qcow2"));
        assert!(!is_protocol_name("base.qcow2"));
        assert!(!is_protocol_name("./a:b.qcow2"));
        assert!(!is_protocol_name("/images/a:b"));
    }
}
