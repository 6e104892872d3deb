//! `thinvm daemon`: runs thinvmd in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// The daemon's socket when none is given.
pub const DEFAULT_SOCKET: &str = "/run/thinvm/thinvmd.sock";

/// Options of `thinvm daemon`.
#[derive(Clone, Debug, clap::Args)]
pub struct DaemonArgs {
    /// The API socket (mode 0660, group `--group`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The database and per-VM folders.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/thinvm")]
    pub state_dir: PathBuf,
    /// A folder kernels and initrds may come from (repeatable; default STATE_DIR/images).
    #[arg(long = "allow-dir", value_name = "DIR")]
    pub allow_dirs: Vec<PathBuf>,
    /// The group whose members may use the API besides root.
    #[arg(long, value_name = "NAME", default_value = "thinvm")]
    pub group: String,
    /// Seconds a stop waits for the guest to power off before the hard stop.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub stop_timeout: f64,
    /// Console log size cap per VM.
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = crate::size::parse_size)]
    pub log_max: u64,
    /// Also serve `GET /metrics` on this TCP address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// First restart delay in milliseconds (doubles per restart, up to 60 s).
    #[arg(long, value_name = "MS", default_value_t = 1000, hide = true)]
    pub backoff_ms: u64,
}

/// Lets SIGTERM, SIGINT and SIGHUP through again in this thread (and the runtime's threads it
/// starts): the daemon handles them itself, and its VMMs must not inherit a blocked mask.
pub fn unblock_stop_signals() {
    // SAFETY: sigemptyset/sigaddset fill a sigset we own; pthread_sigmask takes it by pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: DaemonArgs) -> anyhow::Result<i32> {
    unblock_stop_signals();
    if !(args.stop_timeout.is_finite() && (0.0..=3600.0).contains(&args.stop_timeout)) {
        anyhow::bail!(
            "--stop-timeout {}: expected seconds in 0..=3600",
            args.stop_timeout
        );
    }
    let binary = std::env::current_exe().context("finding the thinvm binary")?;
    let mut cfg = daemon::Config::new(args.state_dir.clone(), binary);
    if !args.allow_dirs.is_empty() {
        cfg.allowed_dirs = args.allow_dirs;
    }
    cfg.stop_timeout = Duration::from_secs_f64(args.stop_timeout);
    cfg.log_max = args.log_max;
    cfg.backoff_base = Duration::from_millis(args.backoff_ms.max(1));
    let opts = daemon::ServeOptions {
        socket: args.socket,
        group: Some(args.group),
        metrics_listen: args.metrics_listen,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("thinvmd")
        .enable_all()
        .build()
        .context("creating the runtime")?;
    rt.block_on(daemon::run(cfg, opts))?;
    Ok(0)
}
