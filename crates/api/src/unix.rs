//! Unix-socket plumbing: bind with a mode, check the peer's credentials, serve a router.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use tokio::net::unix::{SocketAddr, UCred};
use tokio::net::{UnixListener, UnixStream};

/// Binding or serving a socket failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: another process is listening on this socket")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; not removing it")]
    NotASocket { path: PathBuf },
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Binds a Unix socket at `path` with permission bits `mode`. A stale socket file (nobody
/// listening) is removed first; a live one or a non-socket file is an error.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io_err(path, "removing the stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err(path, "bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(path, "chmod"))?;
    Ok(listener)
}

/// Who may connect: decides from the peer's credentials.
pub type PeerCheck = Arc<dyn Fn(&UCred) -> bool + Send + Sync>;

/// A listener that drops every connection whose peer `check` refuses.
pub struct CheckedListener {
    inner: UnixListener,
    check: PeerCheck,
}

impl CheckedListener {
    /// Wraps `inner`.
    pub fn new(inner: UnixListener, check: PeerCheck) -> Self {
        CheckedListener { inner, check }
    }
}

impl Listener for CheckedListener {
    type Io = UnixStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(cred) if (self.check)(&cred) => return (stream, addr),
                    Ok(cred) => tracing::warn!(
                        uid = cred.uid(),
                        gid = cred.gid(),
                        pid = ?cred.pid(),
                        "refused a connection: the peer is not allowed"
                    ),
                    Err(e) => tracing::warn!("refused a connection: no peer credentials: {e}"),
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The supplementary groups of process `pid` (from /proc), empty when unreadable.
pub fn process_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The daemon's rule: root, the daemon's own user, or a member of `group` (primary or
/// supplementary group of the connecting process).
pub fn allow_user_or_group(group: Option<u32>) -> PeerCheck {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    Arc::new(move |cred: &UCred| {
        if cred.uid() == 0 || cred.uid() == me {
            return true;
        }
        let Some(g) = group else { return false };
        cred.gid() == g
            || cred
                .pid()
                .is_some_and(|pid| process_groups(pid).contains(&g))
    })
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve<L: Listener>(
    listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_groups_are_read() {
        let pid = std::process::id() as i32;
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        assert_eq!(
            process_groups(pid).len(),
            line.split_whitespace().count() - 1
        );
        assert!(process_groups(-5).is_empty());
    }

    #[tokio::test]
    async fn bind_sets_the_mode_and_refuses_live_or_foreign_paths() {
        let dir = std::env::temp_dir().join(format!("api-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let l = bind(&sock, 0o600).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind(&sock, 0o600), Err(SocketError::InUse { .. })));
        drop(l);
        // Stale now: nobody listens, so it is replaced.
        let _l = bind(&sock, 0o660).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind(&file, 0o600),
            Err(SocketError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
