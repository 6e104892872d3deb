//! Building initramfs archives: a newc ("070701") cpio writer and gzip through the `gzip` tool.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cache::{CacheError, ContentKey};

/// Errors building an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// Reading an input file failed (or it changed size while being archived).
    #[error("cannot archive {path} as {dest}: {source}")]
    Input {
        /// Host file.
        path: PathBuf,
        /// Path inside the archive.
        dest: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is too large for the newc format (4 GiB - 1).
    #[error("{dest} is {size} bytes: too large for a newc cpio archive")]
    TooLarge {
        /// Path inside the archive.
        dest: String,
        /// Its size.
        size: u64,
    },
    /// Writing the output failed.
    #[error("cannot write archive {path}: {source}")]
    Output {
        /// Output path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// gzip failed.
    #[error("gzip for {path} failed: {detail}")]
    Gzip {
        /// Output path.
        path: PathBuf,
        /// Exit status or spawn error.
        detail: String,
    },
    /// Hashing inputs failed.
    #[error(transparent)]
    Key(#[from] CacheError),
}

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// In-memory contents.
    Bytes(Vec<u8>),
    /// A host file (streamed when writing; symlinks followed).
    Path(PathBuf),
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Source),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
struct Entry {
    mode: u32,
    kind: Kind,
}

/// An archive under construction. Entries are kept sorted by path, so a directory always comes
/// before its contents; parent directories are added automatically; a later entry with the same
/// path replaces the earlier one.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

fn clean(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn put(&mut self, path: &str, entry: Entry) {
        let path = clean(path);
        let mut parent = String::new();
        for comp in path.split('/').take(path.matches('/').count()) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries.entry(parent.clone()).or_insert(Entry {
                mode: S_IFDIR | 0o755,
                kind: Kind::Dir,
            });
        }
        self.entries.insert(path, entry);
    }

    /// Adds a directory (mode 0755).
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.put(
            path,
            Entry {
                mode: S_IFDIR | 0o755,
                kind: Kind::Dir,
            },
        );
        self
    }

    /// Adds a regular file with permission bits `perm` (e.g. 0o755).
    pub fn file(&mut self, path: &str, source: Source, perm: u32) -> &mut Self {
        let mode = S_IFREG | (perm & 0o7777);
        self.put(
            path,
            Entry {
                mode,
                kind: Kind::File(source),
            },
        );
        self
    }

    /// Adds a symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let kind = Kind::Symlink(target.to_string());
        self.put(
            path,
            Entry {
                mode: S_IFLNK | 0o777,
                kind,
            },
        );
        self
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        let kind = Kind::CharDev { major, minor };
        self.put(
            path,
            Entry {
                mode: S_IFCHR | (perm & 0o7777),
                kind,
            },
        );
        self
    }

    /// True if the archive has an entry at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&clean(path))
    }

    /// A content key over every entry (paths, modes, file contents, link targets).
    pub fn key(&self, domain: &str) -> Result<String, CpioError> {
        let mut key = ContentKey::new(domain);
        for (path, e) in &self.entries {
            key.add_str(path).add_str(&format!("{:o}", e.mode));
            match &e.kind {
                Kind::Dir => {}
                Kind::File(Source::Bytes(b)) => _ = key.add_bytes(b),
                Kind::File(Source::Path(p)) => _ = key.add_file(p)?,
                Kind::Symlink(t) => _ = key.add_str(t),
                Kind::CharDev { major, minor } => _ = key.add_str(&format!("{major}:{minor}")),
            }
        }
        Ok(key.hex())
    }

    /// Writes the archive in newc format (with the trailer) to `out`.
    pub fn write_newc<W: Write>(&self, out: &mut W, out_path: &Path) -> Result<(), CpioError> {
        let oerr = |source| CpioError::Output {
            path: out_path.to_path_buf(),
            source,
        };
        let mut written: u64 = 0;
        for (ino, (path, e)) in (1u32..).zip(&self.entries) {
            let (size, rdev, mut reader): (u64, (u32, u32), Box<dyn Read>) = match &e.kind {
                Kind::Dir => (0, (0, 0), Box::new(std::io::empty())),
                Kind::File(Source::Bytes(b)) => (b.len() as u64, (0, 0), Box::new(&b[..])),
                Kind::File(Source::Path(p)) => {
                    let ierr = |source| CpioError::Input {
                        path: p.clone(),
                        dest: path.clone(),
                        source,
                    };
                    let f = File::open(p).map_err(ierr)?;
                    let len = f.metadata().map_err(ierr)?.len();
                    (len, (0, 0), Box::new(f.take(len)))
                }
                Kind::Symlink(t) => (t.len() as u64, (0, 0), Box::new(t.as_bytes())),
                Kind::CharDev { major, minor } => (0, (*major, *minor), Box::new(std::io::empty())),
            };
            let size32 = u32::try_from(size).map_err(|_| CpioError::TooLarge {
                dest: path.clone(),
                size,
            })?;
            let nlink = if matches!(e.kind, Kind::Dir) { 2 } else { 1 };
            written += write_header(out, ino, e.mode, nlink, size32, rdev, path).map_err(oerr)?;
            let copied = std::io::copy(&mut reader, out).map_err(oerr)?;
            if copied != size {
                let source = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank");
                let p = match &e.kind {
                    Kind::File(Source::Path(p)) => p.clone(),
                    _ => PathBuf::new(),
                };
                return Err(CpioError::Input {
                    path: p,
                    dest: path.clone(),
                    source,
                });
            }
            written += size;
            written += pad4(out, written).map_err(oerr)?;
        }
        written += write_header(out, 0, 0, 1, 0, (0, 0), "TRAILER!!!").map_err(oerr)?;
        pad4(out, written).map_err(oerr)?;
        Ok(())
    }

    /// Writes the gzip-compressed archive to `dest` atomically (temp file, then rename).
    pub fn write_gz(&self, dest: &Path) -> Result<(), CpioError> {
        let oerr = |source| CpioError::Output {
            path: dest.to_path_buf(),
            source,
        };
        let tmp = dest.with_extension(format!("tmp.{}", std::process::id()));
        let file = File::create(&tmp).map_err(oerr)?;
        let gz_err = |detail: String| CpioError::Gzip {
            path: dest.to_path_buf(),
            detail,
        };
        let mut child = Command::new("gzip")
            .args(["-n", "-6", "-c"])
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .map_err(|e| gz_err(format!("cannot run gzip: {e}")))?;
        let result = match child.stdin.take() {
            Some(stdin) => {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, stdin);
                self.write_newc(&mut w, dest)
                    .and_then(|()| w.flush().map_err(oerr))
            }
            None => Err(gz_err("no stdin pipe".into())),
        };
        let status = child.wait().map_err(|e| gz_err(e.to_string()))?;
        result?;
        if !status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(gz_err(status.to_string()));
        }
        std::fs::rename(&tmp, dest).map_err(oerr)
    }
}

fn write_header<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) -> std::io::Result<u64> {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        rdev.0,
        rdev.1,
        namesize as u32,
        0,
    ];
    let mut h = String::with_capacity(110 + namesize);
    h.push_str("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    h.push_str(name);
    h.push('\0');
    out.write_all(h.as_bytes())?;
    let n = h.len() as u64;
    Ok(n + pad4(out, n)?)
}

fn pad4<W: Write>(out: &mut W, written: u64) -> std::io::Result<u64> {
    let pad = (4 - written % 4) % 4;
    out.write_all(&[0u8; 3][..pad as usize])?;
    Ok(pad)
}

#[cfg(test)]
#[path = "cpio_tests.rs"]
mod tests;
