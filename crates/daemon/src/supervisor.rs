//! The daemon's core: VM definitions in the database, one VMM process per running VM, and the
//! user's operations on them. Each VM has an operation lock, so two calls on one VM never
//! interleave; calls on different VMs run concurrently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use api::client::{Client, ClientError};
use api::daemon::{Event, State, VmSpec, VmStatus};
use api::ApiError;
use tokio::sync::{broadcast, Mutex};

use std::os::fd::OwnedFd;

use crate::confine::{open_beneath, ConfineError};
use crate::db::{Change, Db, DbError, VmRow};
use crate::process::Proc;
use crate::vmm_config::PayloadFds;

/// The command line a guest gets when its definition has none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Database, per-VM folders (`vms/NAME/`: api.sock, console.log, vmm.log, exit.json).
    pub state_dir: PathBuf,
    /// The thinvm binary started as `thinvm vmm` for each VM.
    pub vmm_binary: PathBuf,
    /// Kernel and initrd paths must resolve (symlinks followed) inside one of these.
    pub allowed_dirs: Vec<PathBuf>,
    /// How long `stop` waits for the guest to power off before the hard stop.
    pub stop_timeout: Duration,
    /// Console log size cap per VM (one rotated file is kept besides).
    pub log_max: u64,
    /// First restart delay; doubles per restart up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long a new VMM may take to serve its API.
    pub ready_timeout: Duration,
}

impl Config {
    /// Defaults under `state_dir`: images in `state_dir/images`, 30 s stop timeout, 8 MiB logs,
    /// backoff 1 s doubling to 60 s.
    pub fn new(state_dir: PathBuf, vmm_binary: PathBuf) -> Self {
        Config {
            allowed_dirs: vec![state_dir.join("images")],
            state_dir,
            vmm_binary,
            stop_timeout: Duration::from_secs(30),
            log_max: 8 << 20,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(10),
        }
    }
}

/// What the daemon knows about a VM's live process.
#[derive(Default)]
pub(crate) struct Slot {
    pub proc: Option<Arc<Proc>>,
    /// Bumped at every start: a watcher or timer of an older process leaves the VM alone.
    pub generation: u64,
}

/// The daemon.
pub struct Daemon {
    /// Held for the daemon's life: one daemon per state folder.
    _lock: std::fs::File,
    pub cfg: Config,
    pub db: Db,
    pub events: broadcast::Sender<Event>,
    slots: std::sync::Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
}

/// The database error as an API error.
pub fn db_error(e: DbError) -> ApiError {
    match e {
        DbError::NoSuchVm(n) => ApiError::not_found(format!("no VM named {n:?}")),
        DbError::Exists(n) => ApiError::conflict(format!("a VM named {n:?} already exists")),
        e @ DbError::CidTaken { .. } => ApiError::bad_request(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

fn wrong_state(op: &str, name: &str, state: State) -> ApiError {
    ApiError::conflict(format!("cannot {op} VM {name:?}: it is {}", state.as_str()))
}

impl Daemon {
    /// Creates the state folders and opens the database.
    pub fn new(cfg: Config) -> Result<Arc<Self>, ApiError> {
        std::fs::create_dir_all(cfg.state_dir.join("vms")).map_err(|e| {
            ApiError::internal(format!("cannot create {}: {e}", cfg.state_dir.display()))
        })?;
        let lock = lock_state_dir(&cfg.state_dir)?;
        let db = Db::open(&cfg.state_dir.join("thinvmd.db")).map_err(db_error)?;
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(Daemon {
            _lock: lock,
            cfg,
            db,
            events,
            slots: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    pub(crate) fn slot(&self, name: &str) -> Arc<Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(name.to_string()).or_default().clone()
    }

    /// The VM's folder.
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.cfg.state_dir.join("vms").join(name)
    }

    /// Stores a change with its event and publishes the event.
    pub(crate) async fn record(&self, name: &str, change: Change) -> Result<VmRow, ApiError> {
        let (row, ev) = self.db.update(name, change).await.map_err(db_error)?;
        let _ = self.events.send(ev);
        Ok(row)
    }

    /// Opens `path` inside an allowed folder (see [`crate::confine`]).
    fn confine_open(&self, field: &str, path: &str, write: bool) -> Result<OwnedFd, ApiError> {
        open_beneath(&self.cfg.allowed_dirs, path, write).map_err(|e| match e {
            ConfineError::Resolve { .. } => ApiError::bad_request(format!("{field}: {e}")),
            other => ApiError::new(403, "path_not_allowed", format!("{field}: {other}")),
        })
    }

    /// Opens the VM's kernel, initrd and disks (confined), in that order.
    fn open_files(&self, spec: &VmSpec) -> Result<PayloadFds, ApiError> {
        Ok(PayloadFds {
            kernel: self.confine_open("kernel", &spec.kernel, false)?,
            initrd: spec
                .initrd
                .as_deref()
                .map(|i| self.confine_open("initrd", i, false))
                .transpose()?,
            disks: spec
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| self.confine_open(&format!("disks[{i}].path"), &d.path, !d.readonly))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Defines a VM.
    pub async fn create(self: &Arc<Self>, mut spec: VmSpec) -> Result<VmStatus, ApiError> {
        spec.validate().map_err(ApiError::bad_request)?;
        crate::macs::assign_macs(&mut spec)?;
        drop(self.open_files(&spec)?);
        let (row, ev) = self.db.insert(spec).await.map_err(db_error)?;
        let _ = self.events.send(ev);
        Ok(row.status)
    }

    /// One VM.
    pub async fn get(&self, name: &str) -> Result<VmStatus, ApiError> {
        Ok(self.db.get(name).await.map_err(db_error)?.status)
    }

    /// Every VM.
    pub async fn list(&self) -> Result<Vec<VmStatus>, ApiError> {
        let rows = self.db.list().await.map_err(db_error)?;
        Ok(rows.into_iter().map(|r| r.status).collect())
    }

    /// Starts a VM that does not run (a user start resets the restart count).
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<VmStatus, ApiError> {
        let slot = self.slot(name);
        let mut slot = slot.lock().await;
        let row = self.db.get(name).await.map_err(db_error)?;
        if row.status.state.has_process() {
            return Err(wrong_state("start", name, row.status.state));
        }
        Ok(self.start_locked(name, &mut slot, 0).await?.status)
    }

    /// Starts the VMM and boots the VM through its API. The caller holds the VM's lock.
    pub(crate) async fn start_locked(
        self: &Arc<Self>,
        name: &str,
        slot: &mut Slot,
        restarts: u32,
    ) -> Result<VmRow, ApiError> {
        let row = self.db.get(name).await.map_err(db_error)?;
        // Opened again at every start (a path may have been swapped since the create); the VMM
        // inherits the descriptors and opens /proc/self/fd/N, never the names.
        let files = self.open_files(&row.status.spec)?;
        let dir = self.vm_dir(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
        let _ = std::fs::remove_file(dir.join("exit.json"));
        let mut change = Change::to(State::Starting, "starting");
        change.user_stop = Some(false);
        change.restarts = Some(restarts);
        self.record(name, change).await?;
        let args = self.vmm_args(&dir);
        let spawned = Proc::spawn(
            &self.cfg.vmm_binary,
            &args,
            &dir.join("vmm.log"),
            &files.raw(),
        );
        let proc = match spawned {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let e = ApiError::internal(e.to_string());
                return self.start_failed(name, slot, None, e).await;
            }
        };
        slot.generation += 1;
        slot.proc = Some(proc.clone());
        let mut change = Change::to(State::Starting, format!("VMM pid {}", proc.pid));
        change.process = Some(Some((proc.pid, proc.start_time)));
        self.record(name, change).await?;
        if let Err(e) = self.boot(&dir, &row.status.spec, &files, &proc).await {
            return self.start_failed(name, slot, Some(proc), e).await;
        }
        let row = self
            .record(name, Change::to(State::Running, "running"))
            .await?;
        self.watch(name, proc, slot.generation);
        Ok(row)
    }

    fn vmm_args(&self, dir: &Path) -> Vec<String> {
        let p = |f: &str| dir.join(f).display().to_string();
        vec![
            "vmm".into(),
            "--api-socket".into(),
            p("api.sock"),
            "--exit-with-vm".into(),
            "--exit-file".into(),
            p("exit.json"),
            "--console-socket".into(),
            p("console.sock"),
            "--log-max".into(),
            self.cfg.log_max.to_string(),
        ]
    }

    /// Waits for the VMM's API, then `vm.create` and `vm.boot`.
    async fn boot(
        &self,
        dir: &Path,
        spec: &VmSpec,
        files: &PayloadFds,
        proc: &Proc,
    ) -> Result<(), ApiError> {
        let client = Client::new(dir.join("api.sock"));
        let deadline = tokio::time::Instant::now() + self.cfg.ready_timeout;
        loop {
            if proc.has_exited() {
                return Err(ApiError::internal(
                    "the VMM ended before serving its API (see vmm.log)",
                ));
            }
            match client
                .call::<serde_json::Value>("GET", "/api/v1/vmm.ping", None)
                .await
            {
                Ok(_) => break,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "the VMM's API did not answer: {e}"
                    )))
                }
            }
        }
        let config = crate::vmm_config::vm_config(dir, spec, files);
        let put = |call: &'static str, body| {
            let client = client.clone();
            async move {
                client
                    .call::<serde_json::Value>("PUT", &format!("/api/v1/{call}"), body)
                    .await
                    .map_err(|e| match e {
                        ClientError::Api(a) if a.status == 400 => {
                            ApiError::bad_request(format!("{call}: {}", a.message))
                        }
                        other => ApiError::internal(format!("{call}: {other}")),
                    })
            }
        };
        put("vm.create", Some(&config)).await?;
        put("vm.boot", None).await?;
        Ok(())
    }

    async fn start_failed(
        &self,
        name: &str,
        slot: &mut Slot,
        proc: Option<Arc<Proc>>,
        why: ApiError,
    ) -> Result<VmRow, ApiError> {
        if let Some(p) = proc {
            let _ = p.signal(libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), p.exited()).await;
        }
        slot.proc = None;
        let msg = format!("start failed: {}", why.message);
        let mut change = Change::to(State::Stopped, msg.clone());
        change.process = Some(None);
        change.last_exit = Some(msg);
        change.user_stop = Some(true);
        self.record(name, change).await?;
        Err(ApiError::new(
            why.status,
            "start_failed",
            format!("cannot start VM {name:?}: {}", why.message),
        ))
    }

    /// A client of the VM's own API.
    pub fn vmm_client(&self, name: &str) -> Client {
        Client::new(self.vm_dir(name).join("api.sock"))
    }

    /// Pauses or resumes a running VM through its API.
    pub async fn pause_resume(&self, name: &str, pause: bool) -> Result<VmStatus, ApiError> {
        let slot = self.slot(name);
        let _slot = slot.lock().await;
        let row = self.db.get(name).await.map_err(db_error)?;
        let (from, to, call) = if pause {
            (State::Running, State::Paused, "vm.pause")
        } else {
            (State::Paused, State::Running, "vm.resume")
        };
        if row.status.state != from {
            return Err(wrong_state(
                if pause { "pause" } else { "resume" },
                name,
                row.status.state,
            ));
        }
        self.vmm_client(name)
            .call::<serde_json::Value>("PUT", &format!("/api/v1/{call}"), None)
            .await
            .map_err(vmm_error)?;
        Ok(self.record(name, Change::to(to, to.as_str())).await?.status)
    }

    /// Deletes a VM that has no process, with its folder.
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let slot = self.slot(name);
        let _slot = slot.lock().await;
        match self
            .db
            .delete(name, |s| !s.has_process())
            .await
            .map_err(db_error)?
        {
            Ok(ev) => {
                let _ = self.events.send(ev);
                let _ = std::fs::remove_dir_all(self.vm_dir(name));
                Ok(())
            }
            Err(state) => Err(wrong_state("delete", name, state)),
        }
    }
}

/// Takes `STATE_DIR/thinvmd.lock` (flock): a second daemon on the same folder would adopt and
/// restart the same VMs.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, ApiError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("thinvmd.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ApiError::internal(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own; non-blocking.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(ApiError::conflict(format!(
            "another thinvmd uses {} (lock {} is held)",
            dir.display(),
            path.display()
        )));
    }
    Ok(f)
}

/// An error from a VMM's API as the daemon's.
pub fn vmm_error(e: ClientError) -> ApiError {
    ApiError::new(502, "vmm_error", format!("the VMM answered: {e}"))
}
