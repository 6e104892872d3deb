//! Paths from requests are opened only inside the allowed folders: the path is resolved once
//! (to find the folder and the name inside it), then opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from that folder, so a component swapped for a symlink or a `..` after
//! the check cannot lead outside. The VMM gets the descriptor, not the name.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("{path}: {source}")]
    Resolve {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not inside the allowed folders ({allowed})")]
    Outside { path: String, allowed: String },
    #[error("{path}: opening it beneath {dir}: {source}")]
    Open {
        path: String,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: String },
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2(dir: &OwnedFd, rel: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let name = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC | libc::O_NOCTTY) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a directory fd we own, a NUL-terminated name, and an open_how of the
    // size we pass; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens `path` (read-only, or read-write) if it is a regular file inside one of `allowed`.
pub fn open_beneath(allowed: &[PathBuf], path: &str, write: bool) -> Result<OwnedFd, ConfineError> {
    let real = std::fs::canonicalize(path).map_err(|source| ConfineError::Resolve {
        path: path.to_string(),
        source,
    })?;
    for dir in allowed {
        let Ok(cdir) = std::fs::canonicalize(dir) else {
            continue;
        };
        let Ok(rel) = real.strip_prefix(&cdir) else {
            continue;
        };
        let open_err = |source| ConfineError::Open {
            path: path.to_string(),
            dir: cdir.clone(),
            source,
        };
        let dirfd = std::fs::File::open(&cdir).map_err(open_err)?;
        let dirfd = OwnedFd::from(dirfd);
        let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
        let fd = openat2(&dirfd, rel, flags).map_err(open_err)?;
        let file = std::fs::File::from(fd);
        let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if !is_file {
            return Err(ConfineError::NotAFile {
                path: path.to_string(),
            });
        }
        return Ok(OwnedFd::from(file));
    }
    Err(ConfineError::Outside {
        path: path.to_string(),
        allowed: allowed
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_outside_symlinks_and_dot_dot() {
        let dir = std::env::temp_dir().join(format!("thinvmd-confine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ok = dir.join("ok");
        std::fs::create_dir_all(ok.join("sub")).unwrap();
        std::fs::write(ok.join("sub/k"), b"kernel").unwrap();
        std::fs::write(dir.join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), ok.join("link")).unwrap();
        std::os::unix::fs::symlink(ok.join("sub/k"), ok.join("inner-link")).unwrap();
        let allowed = vec![ok.clone()];
        let p = |s: &Path| s.display().to_string();
        let fd = open_beneath(&allowed, &p(&ok.join("sub/k")), false).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).unwrap();
        assert_eq!(s, "kernel");
        // A symlink that stays inside resolves to its target, which is inside.
        assert!(open_beneath(&allowed, &p(&ok.join("inner-link")), true).is_ok());
        for bad in [dir.join("secret"), ok.join("link"), ok.join("../secret")] {
            let e = open_beneath(&allowed, &p(&bad), false).unwrap_err();
            assert!(matches!(e, ConfineError::Outside { .. }), "{bad:?}: {e}");
        }
        assert!(matches!(
            open_beneath(&allowed, &p(&ok.join("sub")), false),
            Err(ConfineError::NotAFile { .. })
        ));
        assert!(matches!(
            open_beneath(&allowed, &p(&ok.join("nope")), false),
            Err(ConfineError::Resolve { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
