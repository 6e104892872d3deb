//! The per-VM API inside a VMM process: the [`Controller`] the API thread calls, the thread
//! that serves it on a Unix socket, and the size-capped console log.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use api::ch::{
    self, Controller, VmAction, VmConfig, VmCounters, VmInfo, VmResize, VmState, VmmPingResponse,
};
use api::ApiError;
use vmm::vcpu::VcpuMetrics;

/// A request for the thread that owns the VM, with where to send the answer.
pub struct Cmd {
    pub action: VmAction,
    pub reply: Sender<Result<(), ApiError>>,
}

/// What the API thread and the VM's owner share.
pub struct Shared {
    pub status: Mutex<Status>,
    tx: Mutex<Sender<Cmd>>,
}

/// The VM's config and state as the API reports them.
pub struct Status {
    pub config: Option<VmConfig>,
    pub state: VmState,
    pub metrics: Option<Arc<VcpuMetrics>>,
    /// The running VM's balloon, if it has one.
    pub balloon: Option<vmm::BalloonHandle>,
    /// The disks' and network cards' counters of the running VM.
    pub devices: Option<vmm::DeviceCounters>,
}

impl Shared {
    /// A new shared state and the receiving end for the VM's owner.
    pub fn new(config: Option<VmConfig>, state: VmState) -> (Arc<Self>, Receiver<Cmd>) {
        let (tx, rx) = mpsc::channel();
        let shared = Shared {
            status: Mutex::new(Status {
                config,
                state,
                metrics: None,
                balloon: None,
                devices: None,
            }),
            tx: Mutex::new(tx),
        };
        (Arc::new(shared), rx)
    }

    /// Locks the status (a poisoned lock still holds a consistent status: every update is one
    /// assignment).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, action: VmAction) -> Result<(), ApiError> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Cmd { action, reply })
            .map_err(|_| ApiError::internal("the VMM's control loop has ended"))?;
        answer.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            ApiError::internal(format!("{action:?}: no answer from the control loop"))
        })?
    }
}

impl Controller for Shared {
    fn ping(&self) -> VmmPingResponse {
        VmmPingResponse {
            build_version: format!("thinvm {}", env!("CARGO_PKG_VERSION")),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: i64::from(std::process::id()),
            features: vec![],
        }
    }

    fn create(&self, config: VmConfig) -> Result<(), ApiError> {
        for (field, p) in [
            ("payload.kernel", config.payload.kernel.as_ref()),
            ("payload.initramfs", config.payload.initramfs.as_ref()),
        ] {
            if let Some(p) = p {
                File::open(p).map_err(|e| {
                    ApiError::bad_request(format!(
                        "vm.create: field `{field}`: cannot open {p}: {e}"
                    ))
                })?;
            }
        }
        for (i, d) in config.disks.iter().enumerate() {
            std::fs::OpenOptions::new()
                .read(true)
                .write(!d.readonly)
                .open(&d.path)
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "vm.create: field `disks[{i}].path`: cannot open {}: {e}",
                        d.path
                    ))
                })?;
        }
        let mut st = self.lock();
        if st.config.is_some() {
            return Err(ApiError::conflict(
                "vm.create: a VM is already created (vm.delete it first)",
            ));
        }
        st.config = Some(config);
        st.state = VmState::Created;
        Ok(())
    }

    fn info(&self) -> Result<VmInfo, ApiError> {
        let st = self.lock();
        let config = st
            .config
            .clone()
            .ok_or_else(|| ApiError::not_found("vm.info: no VM is created"))?;
        // What the guest has, the balloon's pages excluded (as Cloud Hypervisor reports it).
        let ballooned = st.balloon.as_ref().map_or(0, |b| b.counters().actual_bytes);
        Ok(VmInfo {
            memory_actual_size: config.memory.size.saturating_sub(ballooned),
            config,
            state: st.state,
        })
    }

    fn counters(&self) -> Result<VmCounters, ApiError> {
        let st = self.lock();
        if st.config.is_none() {
            return Err(ApiError::not_found("vm.counters: no VM is created"));
        }
        let mut c: VmCounters = st.metrics.as_deref().map(counters_of).unwrap_or_default();
        for (name, values) in st.devices.iter().flat_map(|d| d.groups()) {
            let group = values.into_iter().map(|(k, v)| (k.to_string(), v));
            c.insert(name, group.collect());
        }
        if let Some(b) = &st.balloon {
            // Ask for fresh guest statistics; they arrive for the next call.
            b.request_stats();
            c.insert("balloon".into(), b.counters().named().into_iter().collect());
        }
        Ok(c)
    }

    fn resize(&self, resize: VmResize) -> Result<(), ApiError> {
        let mut st = self.lock();
        let state = st.state;
        let config = st
            .config
            .as_mut()
            .ok_or_else(|| ApiError::not_found("vm.resize: no VM is created"))?;
        let Some(size) = resize.balloon_for(config)? else {
            return Ok(());
        };
        if matches!(state, VmState::Running | VmState::Paused) {
            let handle = st.balloon.as_ref().ok_or_else(|| {
                ApiError::internal("vm.resize: the running VM has no balloon handle")
            })?;
            handle
                .set_target(size)
                .map_err(|e| ApiError::bad_request(format!("vm.resize: {e}")))?;
        }
        // Before boot (or after shutdown) the new size is what the next boot starts with.
        if let Some(b) = st.config.as_mut().and_then(|c| c.balloon.as_mut()) {
            b.size = size;
        }
        Ok(())
    }

    fn action(&self, action: VmAction) -> Result<(), ApiError> {
        use VmState::*;
        let state = {
            let st = self.lock();
            match (&st.config, action) {
                (_, VmAction::ShutdownVmm) => None,
                (None, _) => {
                    return Err(ApiError::not_found(format!("{action:?}: no VM is created")))
                }
                (Some(_), _) => Some(st.state),
            }
        };
        let allowed =
            match (action, state) {
                (VmAction::ShutdownVmm | VmAction::Delete, _) => true,
                (VmAction::Boot, Some(Created | Shutdown)) => true,
                (VmAction::Reboot, Some(Running | Paused)) => return Err(ApiError::not_supported(
                    "vm.reboot: in-process reboot is not supported yet (vm.shutdown then vm.boot)",
                )),
                (VmAction::Shutdown | VmAction::PowerButton, Some(Running | Paused)) => true,
                (VmAction::Pause, Some(Running)) | (VmAction::Resume, Some(Paused)) => true,
                _ => false,
            };
        if !allowed {
            return Err(ApiError::wrong_state(format!(
                "{action:?}: not possible while the VM is {:?}",
                state.unwrap_or(Created)
            )));
        }
        self.send(action)
    }
}

/// Cloud Hypervisor's counters shape: the group "vcpu" with the exit counters (the devices'
/// groups, `_diskN` and `_netN`, are added beside it).
pub fn counters_of(m: &VcpuMetrics) -> VmCounters {
    use std::sync::atomic::Ordering::Relaxed;
    let group = [
        ("io_in", &m.io_in),
        ("io_out", &m.io_out),
        ("mmio_read", &m.mmio_read),
        ("mmio_write", &m.mmio_write),
        ("unhandled_io", &m.unhandled_io),
        ("kicks", &m.kicks),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.load(Relaxed)))
    .collect();
    VmCounters::from([("vcpu".to_string(), group)])
}

/// The thread serving the API; dropping it stops the server and removes the socket.
pub struct ApiThread {
    shutdown: Arc<tokio::sync::Notify>,
    done: Receiver<()>,
    path: PathBuf,
}

impl ApiThread {
    /// Binds `path` (mode 0600) and serves the per-VM API for `ctl` on a thread named "api".
    pub fn start(path: &Path, ctl: Arc<dyn Controller>) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("creating the API runtime")?;
        let listener = {
            let _guard = rt.enter();
            api::unix::bind(path, 0o600)?
        };
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let (done_tx, done) = mpsc::channel();
        let notify = shutdown.clone();
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                let stop = async move { notify.notified().await };
                if let Err(e) = rt.block_on(api::unix::serve(listener, ch::router(ctl), stop)) {
                    tracing::error!("the API server failed: {e}");
                }
                let _ = done_tx.send(());
            })
            .context("starting the API thread")?;
        Ok(ApiThread {
            shutdown,
            done,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ApiThread {
    fn drop(&mut self) {
        self.shutdown.notify_one();
        let _ = self.done.recv_timeout(Duration::from_secs(2));
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A console log that keeps at most `max` bytes in the file plus one rotated file (`.1`).
pub struct CappedLog {
    path: PathBuf,
    file: io::LineWriter<File>,
    written: u64,
    max: u64,
}

impl CappedLog {
    /// Opens (appends to) `path`.
    pub fn open(path: &Path, max: u64) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(CappedLog {
            path: path.to_path_buf(),
            file: io::LineWriter::new(file),
            written,
            max: max.max(1),
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.file = io::LineWriter::new(file);
        self.written = 0;
        Ok(())
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written > 0 && self.written.saturating_add(buf.len() as u64) > self.max {
            self.rotate()?;
        }
        let room = usize::try_from(self.max.saturating_sub(self.written)).unwrap_or(usize::MAX);
        let n = self.file.write(&buf[..buf.len().min(room.max(1))])?;
        self.written = self.written.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_log_rotates_and_bounds_the_size() {
        let dir = std::env::temp_dir().join(format!("capped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("console.log");
        let mut log = CappedLog::open(&p, 100).unwrap();
        for i in 0..50 {
            writeln!(log, "line {i:02}").unwrap();
        }
        log.flush().unwrap();
        let cur = std::fs::read_to_string(&p).unwrap();
        let old = std::fs::read_to_string(dir.join("console.log.1")).unwrap();
        assert!(
            cur.len() <= 100 && old.len() <= 100,
            "{} {}",
            cur.len(),
            old.len()
        );
        assert!(cur.ends_with("line 49\n"), "{cur}");
        assert!(!old.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
