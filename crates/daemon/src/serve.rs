//! Running thinvmd: recover the VMs, then serve the API on the Unix socket (mode 0660, peers
//! checked) until SIGTERM or SIGINT. VMMs are left running: a restarted daemon adopts them.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Arc;

use api::unix::{allow_user_or_group, bind, CheckedListener};

use crate::{Config, Daemon};

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub socket: PathBuf,
    /// The group allowed to connect besides root and the daemon's user (`thinvm` by default).
    pub group: Option<String>,
    /// An optional TCP address serving only `GET /metrics` (Prometheus cannot scrape a Unix
    /// socket).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Running the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Socket(#[from] api::unix::SocketError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serving the API: {0}")]
    Io(#[from] std::io::Error),
}

/// The gid of a group name, if it exists.
pub fn group_id(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: getgrnam takes a NUL-terminated name; the result is read at once, before any
    // other call that could reuse its static buffer (the daemon calls it once, at start).
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        None
    } else {
        // SAFETY: a non-null result points at a valid group entry.
        Some(unsafe { (*gr).gr_gid })
    }
}

/// Runs the daemon until a stop signal.
pub async fn run(cfg: Config, opts: ServeOptions) -> Result<(), ServeError> {
    let daemon = Daemon::new(cfg)?;
    daemon.recover().await?;
    if let Some(dir) = opts.socket.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let listener = bind(&opts.socket, 0o660)?;
    let gid = opts.group.as_deref().and_then(group_id);
    if let (Some(name), None) = (&opts.group, gid) {
        tracing::warn!("group {name:?} does not exist: only root and this user may connect");
    }
    if let Some(g) = gid {
        let c = CString::new(opts.socket.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: chown with a NUL-terminated path; -1 keeps the owner.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, g) } != 0 {
            tracing::warn!("cannot give {} to group {g}", opts.socket.display());
        }
    }
    let listener = CheckedListener::new(listener, allow_user_or_group(gid));
    if let Some(addr) = opts.metrics_listen {
        let tcp = tokio::net::TcpListener::bind(addr).await?;
        let metrics = crate::http::metrics_router(Arc::clone(&daemon));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, metrics).await {
                tracing::error!("the metrics listener failed: {e}");
            }
        });
    }
    tracing::info!(socket = %opts.socket.display(), "thinvmd is serving");
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let int = tokio::signal::ctrl_c();
        match term.as_mut() {
            Ok(t) => tokio::select! { _ = t.recv() => {}, _ = int => {} },
            Err(_) => {
                let _ = int.await;
            }
        }
    };
    api::unix::serve(listener, crate::http::router(Arc::clone(&daemon)), stop).await?;
    let _ = std::fs::remove_file(&opts.socket);
    Ok(())
}
