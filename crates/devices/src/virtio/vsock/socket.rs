//! The host's Unix sockets: the device's listening socket (a stale one is replaced, anything
//! else at the path is refused, the socket file is removed with the device) and non-blocking
//! connects to `PATH_P`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the listening socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something other than a socket is at the path.
    #[error("{0}: exists and is not a socket (refusing to replace it)")]
    NotSocket(PathBuf),
    /// The path does not fit a Unix socket address.
    #[error("{0}: too long for a Unix socket (at most 107 bytes, with room for `_PORT`)")]
    TooLong(PathBuf),
    /// The stale socket could not be removed or the new one not made.
    #[error("{path}: {source}")]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Longest path of the listening socket: `PATH_4294967295` must still fit `sun_path` (108
/// bytes with the terminating NUL).
pub const MAX_PATH: usize = 107 - 11;

/// A listening Unix socket whose file is removed on drop (if it is still ours).
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    ino: (u64, u64),
}

impl Listener {
    /// Binds `path` (non-blocking); a stale socket there is unlinked first.
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        let io_err = |source| SocketError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.as_os_str().len() > MAX_PATH {
            return Err(SocketError::TooLong(path.to_path_buf()));
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(io_err)?,
            Ok(_) => return Err(SocketError::NotSocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        let m = std::fs::symlink_metadata(path).map_err(io_err)?;
        Ok(Listener {
            listener,
            path: path.to_path_buf(),
            ino: (m.dev(), m.ino()),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another descriptor of the same listening socket (for a worker).
    pub fn try_clone(&self) -> io::Result<UnixListener> {
        self.listener.try_clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Connects a non-blocking stream to the Unix socket `path`; fails at once (never waits) when
/// nothing listens or its backlog is full.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path does not fit a Unix socket address",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
    let r = unsafe { libc::connect(fd, (&raw const addr).cast(), len) };
    if r < 0 {
        // A Unix stream connect either completes or fails (EAGAIN: backlog full).
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
