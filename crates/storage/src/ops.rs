//! Whole-image operations behind `thinvm image`: create, info, convert, commit.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::{chain_extent, BlockBackend, BlockError, ExtentKind};
use crate::chain::{open_image, probe_format, resolve_backing, Format, OpenError, OpenOptions};
use crate::file::HostFile;
use crate::formats::qcow2::{create_file, header::incompat, CreateOptions, Qcow2, Qcow2Options};
use crate::formats::raw::Raw;

/// Error of an image operation.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Opening an image (or its chain) failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Reading or writing failed.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// The target exists.
    #[error("{0} already exists")]
    Exists(PathBuf),
}

/// Parses a size such as `4096`, `512K`, `10G` (binary units, as qemu-img).
pub fn parse_size(s: &str) -> Result<u64, OpError> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                _ => return Err(OpError::Invalid(format!("size {s:?}: unknown unit {c:?}"))),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| {
        OpError::Invalid(format!(
            "size {s:?} is not a number with an optional K/M/G/T unit"
        ))
    })?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| OpError::Invalid(format!("size {s:?} is too large")))
}

/// Creates an image. With a backing file and no size, the backing file's size is used.
pub fn create_image(
    path: &Path,
    format: Format,
    size: Option<u64>,
    backing: Option<(&str, Option<Format>)>,
    cluster_size: Option<u64>,
) -> Result<(), OpError> {
    if path.exists() {
        return Err(OpError::Exists(path.to_path_buf()));
    }
    match format {
        Format::Raw => {
            if backing.is_some() {
                return Err(OpError::Invalid(
                    "a raw image cannot have a backing file".into(),
                ));
            }
            let size = size.ok_or_else(|| OpError::Invalid("--size is required".into()))?;
            Raw::create(path, size)?;
            Ok(())
        }
        Format::Qcow2 => {
            let mut opts = CreateOptions {
                cluster_size: cluster_size.unwrap_or(64 << 10),
                ..CreateOptions::default()
            };
            if let Some((name, fmt)) = backing {
                let bpath = resolve_backing(path, name);
                let fmt = match fmt {
                    Some(f) => f,
                    None => probe_format(&bpath)?,
                };
                let b = open_image(&bpath, fmt, &OpenOptions::default())?;
                opts.size = size.unwrap_or(b.size());
                opts.backing_file = Some(name.to_owned());
                opts.backing_format = Some(fmt.name().to_owned());
            } else {
                opts.size = size.ok_or_else(|| OpError::Invalid("--size is required".into()))?;
            }
            create_file(path, &opts)?;
            Ok(())
        }
        other => Err(OpError::Invalid(format!(
            "cannot create {} images",
            other.name()
        ))),
    }
}

/// What `thinvm image info` shows about one image of a chain.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Path as named.
    pub filename: String,
    /// Format name.
    pub format: String,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Bytes allocated on the host.
    pub actual_size: u64,
    /// Cluster (or block) size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// qcow2 version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Backing file name as recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    /// Backing file format as recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_format: Option<String>,
    /// qcow2 dirty bit.
    pub dirty: bool,
    /// qcow2 corrupt bit.
    pub corrupt: bool,
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Describes the image at `path` and every image below it, top first.
pub fn image_info(path: &Path, format: Option<Format>) -> Result<Vec<ImageInfo>, OpError> {
    let mut out = Vec::new();
    let mut next = Some((path.to_path_buf(), format));
    let mut seen = Vec::new();
    while let Some((p, fmt)) = next.take() {
        let real = std::fs::canonicalize(&p).map_err(|source| OpenError::Resolve {
            path: p.clone(),
            source,
        })?;
        if seen.contains(&real) || seen.len() >= 64 {
            return Err(OpenError::Cycle { path: real }.into());
        }
        seen.push(real);
        let fmt = match fmt {
            Some(f) => f,
            None => probe_format(&p)?,
        };
        let mut info = ImageInfo {
            filename: p.display().to_string(),
            format: fmt.name().into(),
            virtual_size: 0,
            actual_size: allocated(&p),
            cluster_size: None,
            version: None,
            backing_file: None,
            backing_format: None,
            dirty: false,
            corrupt: false,
        };
        if fmt == Format::Qcow2 {
            let file = HostFile::open(&p, false, false).map_err(OpenError::from)?;
            let q = Qcow2::open(Box::new(file), Qcow2Options::default()).map_err(|source| {
                OpenError::Qcow2 {
                    path: p.clone(),
                    source,
                }
            })?;
            let h = q.header();
            info.virtual_size = h.size;
            info.cluster_size = Some(h.cluster_size());
            info.version = Some(h.version);
            info.backing_file = h.backing_file.clone();
            info.backing_format = h.backing_format.clone();
            info.dirty = h.incompatible & incompat::DIRTY != 0;
            info.corrupt = h.incompatible & incompat::CORRUPT != 0;
            if let (Some(name), Some(bf)) = (&h.backing_file, &h.backing_format) {
                let bfmt = Format::from_name(bf).ok_or_else(|| OpenError::UnknownFormat {
                    path: p.clone(),
                    name: bf.clone(),
                })?;
                next = Some((resolve_backing(&p, name), Some(bfmt)));
            }
        } else {
            let d = open_image(&p, fmt, &OpenOptions::default())?;
            info.virtual_size = d.size();
        }
        out.push(info);
    }
    Ok(out)
}

/// The chain as pretty JSON (for `thinvm image info --json`).
pub fn info_json(chain: &[ImageInfo]) -> String {
    serde_json::to_string_pretty(chain).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Copy granularity of convert and commit.
const CHUNK: u64 = 1 << 20;

/// Copies the whole content of `src` (through its chain) into a new image at `dst`,
/// writing only data that is not zero (qcow2 targets: deflate-compressed with `compress`).
/// `progress(done, total)` is called as it goes.
pub fn convert(
    src: &Path,
    src_format: Format,
    dst: &Path,
    dst_format: Format,
    cluster_size: Option<u64>,
    compress: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), OpError> {
    let mut s = open_image(src, src_format, &OpenOptions::default())?;
    let size = s.size();
    if compress && dst_format != Format::Qcow2 {
        return Err(OpError::Invalid("compression needs a qcow2 target".into()));
    }
    create_image(dst, dst_format, Some(size), None, cluster_size)?;
    let rw = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    if compress {
        let mut q = crate::chain::open_qcow2(dst, &rw)?;
        copy_compressed(s.as_mut(), &mut q, progress)?;
        q.flush()?;
        return Ok(());
    }
    let mut d = open_image(dst, dst_format, &rw)?;
    copy_data(s.as_mut(), d.as_mut(), false, progress)?;
    d.flush()?;
    Ok(())
}

/// Copies `src` into the qcow2 `dst` one compressed cluster at a time, skipping zeroes.
fn copy_compressed(
    src: &mut dyn BlockBackend,
    dst: &mut Qcow2,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), OpError> {
    let size = src.size();
    let cs = dst.cluster_size();
    let mut buf = vec![0u8; cs as usize];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(cs);
        let ext = chain_extent(src, pos, n)?;
        if !(ext.kind == ExtentKind::Zero && ext.len >= n) {
            let b = &mut buf[..n as usize];
            src.read_at(b, pos)?;
            if b.iter().any(|&x| x != 0) {
                dst.write_compressed(b, pos)?;
            }
        }
        pos += n;
        progress(pos, size);
    }
    Ok(())
}

/// Copies `src` to `dst`. `top_only`: only what the top layer holds (for commit), zero
/// ranges included; otherwise the whole chain, skipping zeroes.
fn copy_data(
    src: &mut dyn BlockBackend,
    dst: &mut dyn BlockBackend,
    top_only: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), OpError> {
    let size = src.size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0u64;
    while pos < size {
        let want = (size - pos).min(CHUNK);
        let ext = if top_only {
            src.extent(pos, want)?
        } else {
            chain_extent(src, pos, want)?
        };
        let n = ext.len.min(want);
        match ext.kind {
            ExtentKind::Data => {
                let b = &mut buf[..n as usize];
                src.read_at(b, pos)?;
                if top_only {
                    check_fits(dst, pos, n)?;
                    dst.write_at(b, pos)?;
                } else {
                    write_nonzero(dst, b, pos)?;
                }
            }
            ExtentKind::Zero if top_only => {
                check_fits(dst, pos, n)?;
                dst.write_zeroes(pos, n)?;
            }
            _ => {}
        }
        pos += n;
        progress(pos, size);
    }
    Ok(())
}

/// Writes the runs of `buf` that are not all zero, in 4 KiB units (the target reads zeroes).
fn write_nonzero(dst: &mut dyn BlockBackend, buf: &[u8], pos: u64) -> Result<(), OpError> {
    const UNIT: usize = 4096;
    let mut i = 0;
    while i < buf.len() {
        let zero = |at: usize| buf[at..(at + UNIT).min(buf.len())].iter().all(|&x| x == 0);
        if zero(i) {
            i += UNIT;
            continue;
        }
        let start = i;
        while i < buf.len() && !zero(i) {
            i += UNIT;
        }
        let end = i.min(buf.len());
        check_fits(dst, pos + start as u64, (end - start) as u64)?;
        dst.write_at(&buf[start..end], pos + start as u64)?;
    }
    Ok(())
}

fn check_fits(dst: &dyn BlockBackend, pos: u64, n: u64) -> Result<(), OpError> {
    if pos + n > dst.size() {
        return Err(OpError::Invalid(format!(
            "data at offset {pos:#x} lies beyond the end of the target ({} bytes)",
            dst.size()
        )));
    }
    Ok(())
}

/// Writes what the qcow2 overlay at `overlay` holds into its backing file, which must be
/// writable. The overlay stays as it is (its content now equals its backing file's there).
pub fn commit(overlay: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<(), OpError> {
    let mut top = open_image(overlay, Format::Qcow2, &OpenOptions::default())?;
    let info = image_info(overlay, Some(Format::Qcow2))?;
    let first = info
        .first()
        .ok_or_else(|| OpError::Invalid("no image".into()))?;
    let (Some(name), Some(fmt)) = (&first.backing_file, &first.backing_format) else {
        return Err(OpError::Invalid(format!(
            "{} has no backing file to commit into",
            overlay.display()
        )));
    };
    let fmt = Format::from_name(fmt)
        .ok_or_else(|| OpError::Invalid(format!("unknown backing format {fmt}")))?;
    let bpath = resolve_backing(overlay, name);
    let mut base = open_image(
        &bpath,
        fmt,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )?;
    copy_data(top.as_mut(), base.as_mut(), true, progress)?;
    base.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert!(parse_size("10X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
