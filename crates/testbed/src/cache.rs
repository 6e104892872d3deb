//! The cache directory, content keys (sha256 of inputs) and the one-outer-QEMU-at-a-time lock.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Errors of cache handling.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No cache directory could be derived from the environment.
    #[error("no cache directory: set THINVM_CACHE, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    /// Creating a directory failed.
    #[error("cannot create cache directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading a file to hash it failed.
    #[error("cannot read {path} to hash it: {source}")]
    Hash {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Opening or locking the lock file failed.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Picks the cache directory: `$THINVM_CACHE`, else `$XDG_CACHE_HOME/thinvm`, else
/// `$HOME/.cache/thinvm`. Empty variables count as unset.
pub fn cache_dir_from(
    thinvm_cache: Option<&str>,
    xdg_cache_home: Option<&str>,
    home: Option<&str>,
) -> Result<PathBuf, CacheError> {
    let set = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(thinvm_cache) {
        return Ok(dir);
    }
    if let Some(dir) = set(xdg_cache_home) {
        return Ok(dir.join("thinvm"));
    }
    set(home)
        .map(|h| h.join(".cache").join("thinvm"))
        .ok_or(CacheError::NoCacheDir)
}

/// The cache directory from this process's environment (see [`cache_dir_from`]).
pub fn default_cache_dir() -> Result<PathBuf, CacheError> {
    let var = |k: &str| std::env::var(k).ok();
    cache_dir_from(
        var("THINVM_CACHE").as_deref(),
        var("XDG_CACHE_HOME").as_deref(),
        var("HOME").as_deref(),
    )
}

/// Creates `path` and its parents.
pub fn ensure_dir(path: &Path) -> Result<(), CacheError> {
    std::fs::create_dir_all(path).map_err(|source| CacheError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Builds a content key: a sha256 over tagged, length-prefixed parts, so that two different
/// input lists never produce the same byte stream.
#[derive(Clone, Default)]
pub struct ContentKey {
    hasher: Sha256,
}

impl ContentKey {
    /// A new key seeded with a domain tag (e.g. "guest-initramfs-v1").
    pub fn new(domain: &str) -> Self {
        let mut key = Self::default();
        key.add_bytes(domain.as_bytes());
        key
    }

    /// Adds a byte string.
    pub fn add_bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self
    }

    /// Adds a string.
    pub fn add_str(&mut self, s: &str) -> &mut Self {
        self.add_bytes(s.as_bytes())
    }

    /// Adds the contents of a file (streamed).
    pub fn add_file(&mut self, path: &Path) -> Result<&mut Self, CacheError> {
        let err = |source| CacheError::Hash {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        self.hasher.update(len.to_le_bytes());
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(err)?;
            let Some(chunk) = buf.get(..n) else { break };
            if n == 0 {
                break;
            }
            self.hasher.update(chunk);
        }
        Ok(self)
    }

    /// The key as lowercase hex.
    pub fn hex(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file's contents, as hex.
pub fn file_sha256(path: &Path) -> Result<String, CacheError> {
    let mut hasher = Sha256::new();
    let mut file = File::open(path).map_err(|source| CacheError::Hash {
        path: path.to_path_buf(),
        source,
    })?;
    std::io::copy(&mut file, &mut hasher).map_err(|source| CacheError::Hash {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(hex(&hasher.finalize()))
}

/// Removes all but the `keep` most recently modified entries of `dir` whose names start with
/// `prefix` (files or directories). Best effort: errors are ignored.
pub fn prune(dir: &Path, prefix: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, path) in found.into_iter().skip(keep) {
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// Marks a cached file as just used (its mtime), so [`prune`] keeps it.
pub fn touch(path: &Path) {
    if let Ok(f) = File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// An exclusive `flock` on a file; released when dropped (the fd closes).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until the exclusive lock on `path` (created if missing) is held.
    pub fn acquire(path: &Path) -> Result<Self, CacheError> {
        let err = |source| CacheError::Lock {
            path: path.to_path_buf(),
            source,
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(err)?;
        loop {
            // SAFETY: flock on a valid, open fd owned by `file`; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Self { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_precedence() {
        let d = cache_dir_from(Some("/c"), Some("/x"), Some("/h")).unwrap();
        assert_eq!(d, PathBuf::from("/c"));
        let d = cache_dir_from(Some(""), Some("/x"), Some("/h")).unwrap();
        assert_eq!(d, PathBuf::from("/x/thinvm"));
        let d = cache_dir_from(None, None, Some("/h")).unwrap();
        assert_eq!(d, PathBuf::from("/h/.cache/thinvm"));
        assert!(cache_dir_from(None, Some(""), None).is_err());
    }

    #[test]
    fn content_key_is_unambiguous() {
        let mut a = ContentKey::new("t");
        a.add_str("ab").add_str("c");
        let mut b = ContentKey::new("t");
        b.add_str("a").add_str("bc");
        assert_ne!(a.hex(), b.hex());
        let mut c = ContentKey::new("t");
        c.add_str("ab").add_str("c");
        assert_eq!(a.hex(), c.hex());
        assert_eq!(a.hex().len(), 64);
    }

    #[test]
    fn prune_keeps_the_newest() {
        let dir = std::env::temp_dir().join(format!("testbed-prune-{}", std::process::id()));
        ensure_dir(&dir).unwrap();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for i in 0..5u64 {
            let f = dir.join(format!("img-{i}"));
            std::fs::write(&f, b"x").unwrap();
            let file = File::options().append(true).open(&f).unwrap();
            file.set_modified(t0 + std::time::Duration::from_secs(i))
                .unwrap();
        }
        std::fs::write(dir.join("other"), b"y").unwrap();
        touch(&dir.join("img-0"));
        prune(&dir, "img-", 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["img-0", "img-4", "other"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_key_follows_content() {
        let dir = std::env::temp_dir().join(format!("testbed-key-{}", std::process::id()));
        ensure_dir(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"one").unwrap();
        let k1 = ContentKey::new("t").add_file(&f).unwrap().hex();
        std::fs::write(&f, b"two").unwrap();
        let k2 = ContentKey::new("t").add_file(&f).unwrap().hex();
        assert_ne!(k1, k2);
        assert_eq!(
            file_sha256(&f).unwrap(),
            "3fc4ccfe745870e2c0d99f71f30ff0656c8dedd41cc1d7d3d376b0dbe685e2f3"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
