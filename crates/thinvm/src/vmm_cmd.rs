//! `thinvm vmm --api-socket PATH`: a VMM process that waits for `vm.create` and `vm.boot` on
//! its per-VM API (as `cloud-hypervisor --api-socket` does), and the API loop that
//! `thinvm run --api-socket` shares.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use api::ch::{ConsoleMode, VmAction, VmConfig, VmState};
use api::ApiError;
use vmm::{BalloonHandle, ExitReason, ExitSignal, Payload, Vm};

use crate::vmm_api::{ApiThread, CappedLog, Cmd, Shared};
use crate::vmm_console::ConsoleHub;

/// Options of `thinvm vmm`.
#[derive(Clone, Debug, clap::Args)]
pub struct VmmArgs {
    /// Where to serve the per-VM API (a Unix socket, mode 0600).
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// End the process when the VM ends, with `thinvm run`'s exit code (the daemon's mode).
    #[arg(long)]
    pub exit_with_vm: bool,
    /// Write why the VM ended (JSON) to this file, replacing it atomically.
    #[arg(long, value_name = "PATH")]
    pub exit_file: Option<PathBuf>,
    /// Also serve the serial console on this Unix socket (mode 0600): clients get the output
    /// and their input goes to the guest.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Largest size of a serial log file (`serial.mode = File`) before it is rotated.
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = crate::size::parse_size)]
    pub log_max: u64,
}

/// Runs `thinvm vmm`; returns the process exit code.
pub fn run(args: VmmArgs) -> anyhow::Result<i32> {
    // Before any thread exists, so that every thread inherits the mask and the watcher alone
    // takes the stop signals.
    vmm::signals::block_stop_signals();
    let stop = Arc::new(ExitSignal::new().context("creating the stop signal")?);
    vmm::signals::watch_stop_signals(stop.clone())?;
    let (shared, rx) = Shared::new(None, VmState::Created);
    let _api = ApiThread::start(&args.api_socket, shared.clone())?;
    let hub = args
        .console_socket
        .as_deref()
        .map(ConsoleHub::start)
        .transpose()?;
    let mut code = 0;
    loop {
        if stop.get().is_some() {
            break;
        }
        let cmd = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(cmd) => cmd,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match cmd.action {
            VmAction::Boot => {
                let Some(config) = shared.lock().config.clone() else {
                    let _ = cmd
                        .reply
                        .send(Err(ApiError::not_found("vm.boot: no VM is created")));
                    continue;
                };
                let (vm, balloon) = match boot(&config, args.log_max, hub.as_ref()) {
                    Ok(booted) => booted,
                    Err(e) => {
                        let _ = cmd.reply.send(Err(e));
                        continue;
                    }
                };
                set_running(&shared, &vm, balloon);
                if let Some(h) = &hub {
                    h.attach(&vm);
                }
                let _ = cmd.reply.send(Ok(()));
                let end = drive(&vm, &rx, &shared, &stop);
                if let Some(h) = &hub {
                    h.detach();
                }
                drop(vm);
                finish(&shared, &end, args.exit_file.as_deref());
                code = end.reason.exit_code();
                if end.quit || args.exit_with_vm {
                    break;
                }
            }
            VmAction::ShutdownVmm => {
                let _ = cmd.reply.send(Ok(()));
                break;
            }
            VmAction::Delete => {
                shared.lock().config = None;
                let _ = cmd.reply.send(Ok(()));
            }
            other => {
                let _ = cmd.reply.send(Err(ApiError::wrong_state(format!(
                    "{other:?}: the VM is not running"
                ))));
            }
        }
    }
    Ok(code)
}

/// Serves the per-VM API for a VM that `thinvm run` already started, until it ends.
pub fn serve_running(
    vm: &Vm,
    config: VmConfig,
    balloon: Option<BalloonHandle>,
    socket: &Path,
) -> anyhow::Result<ExitReason> {
    let (shared, rx) = Shared::new(Some(config), VmState::Running);
    let _api = ApiThread::start(socket, shared.clone())?;
    set_running(&shared, vm, balloon);
    let never = ExitSignal::new().context("creating the stop signal")?;
    let end = drive(vm, &rx, &shared, &never);
    finish(&shared, &end, None);
    Ok(end.reason)
}

fn set_running(shared: &Shared, vm: &Vm, balloon: Option<BalloonHandle>) {
    let mut st = shared.lock();
    st.state = VmState::Running;
    st.metrics = Some(vm.metrics().clone());
    st.balloon = balloon;
    st.devices = Some(vm.device_counters());
}

/// How a booted VM ended.
struct End {
    reason: ExitReason,
    /// `vmm.shutdown` or a stop signal: the process should end too.
    quit: bool,
    /// `vm.delete` while it ran: forget the config.
    delete: bool,
    /// Answers owed to calls that asked for the end.
    replies: Vec<Sender<Result<(), ApiError>>>,
}

/// Answers API calls while `vm` runs; returns when it has ended.
fn drive(vm: &Vm, rx: &Receiver<Cmd>, shared: &Shared, stop: &ExitSignal) -> End {
    let mut end = End {
        reason: ExitReason::Stopped,
        quit: false,
        delete: false,
        replies: Vec::new(),
    };
    loop {
        if vm.exit_signal().get().is_some() {
            end.reason = vm.wait();
            return end;
        }
        if stop.get().is_some() && !end.quit {
            end.quit = true;
            vm.request_stop();
        }
        let cmd = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(cmd) => cmd,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                vm.request_stop();
                continue;
            }
        };
        let answer = match cmd.action {
            VmAction::Pause => {
                vm.pause();
                shared.lock().state = VmState::Paused;
                Ok(())
            }
            VmAction::Resume => {
                vm.resume();
                shared.lock().state = VmState::Running;
                Ok(())
            }
            VmAction::PowerButton => {
                vm.press_power_button();
                Ok(())
            }
            VmAction::Shutdown | VmAction::Delete | VmAction::ShutdownVmm => {
                end.delete |= cmd.action == VmAction::Delete;
                end.quit |= cmd.action == VmAction::ShutdownVmm;
                vm.request_stop();
                end.replies.push(cmd.reply);
                continue;
            }
            other => Err(ApiError::wrong_state(format!(
                "{other:?}: the VM is running"
            ))),
        };
        let _ = cmd.reply.send(answer);
    }
}

/// Records the end: state, exit file, owed answers.
fn finish(shared: &Shared, end: &End, exit_file: Option<&Path>) {
    eprintln!("thinvm: {}", end.reason.describe());
    // The file first: whoever sees the Shutdown state can read why.
    if let Some(path) = exit_file {
        if let Err(e) = write_exit_file(path, &end.reason) {
            tracing::error!("cannot write the exit file {}: {e:#}", path.display());
        }
    }
    {
        let mut st = shared.lock();
        st.state = VmState::Shutdown;
        st.balloon = None;
        if end.delete {
            st.config = None;
        }
    }
    for r in &end.replies {
        let _ = r.send(Ok(()));
    }
}

/// The stable name of an exit reason, as written to the exit file.
pub fn reason_name(r: &ExitReason) -> &'static str {
    match r {
        ExitReason::PowerOff => "poweroff",
        ExitReason::Reboot => "reboot",
        ExitReason::Panic(_) => "panic",
        ExitReason::TripleFault => "triple-fault",
        ExitReason::Internal(_) => "internal",
        ExitReason::Stopped => "stopped",
    }
}

fn write_exit_file(path: &Path, reason: &ExitReason) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "reason": reason_name(reason),
        "code": reason.exit_code(),
        "message": reason.describe(),
    });
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Builds and starts the VM of `config`, with its balloon's handle.
fn boot(
    config: &VmConfig,
    log_max: u64,
    hub: Option<&Arc<ConsoleHub>>,
) -> Result<(Vm, Option<BalloonHandle>), ApiError> {
    let console: Box<dyn Write + Send> =
        match config.serial.mode {
            ConsoleMode::Tty => Box::new(std::io::stdout()),
            ConsoleMode::Off | ConsoleMode::Null => Box::new(std::io::sink()),
            ConsoleMode::File => {
                let path = config.serial.file.as_deref().unwrap_or_default();
                Box::new(CappedLog::open(Path::new(path), log_max).map_err(|e| {
                    ApiError::bad_request(format!("vm.boot: serial.file {path}: {e}"))
                })?)
            }
        };
    let console = match hub {
        Some(h) => h.tee(console),
        None => console,
    };
    let cfg = vmm::VmConfig {
        payload: Payload::Linux {
            kernel: config.payload.kernel.clone().unwrap_or_default().into(),
            initrd: config.payload.initramfs.clone().map(Into::into),
            cmdline: config.payload.cmdline.clone().unwrap_or_default(),
        },
        cpus: usize::from(config.cpus.boot_vcpus),
        memory: config.memory.size,
    };
    let mut vm = Vm::new(&cfg, console).map_err(|e| {
        let msg = format!("vm.boot: {e}");
        if e.is_bad_input() {
            ApiError::bad_request(msg)
        } else {
            ApiError::internal(msg)
        }
    })?;
    let disks = config
        .disks
        .iter()
        .map(disk_config)
        .collect::<Result<Vec<_>, _>>()?;
    crate::disk_arg::attach(&mut vm, &disks, config.rng)
        .map_err(|e| ApiError::bad_request(format!("vm.boot: adding the disks and rng: {e}")))?;
    let nets = config
        .net
        .iter()
        .map(crate::net_arg::from_api)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(format!("vm.boot: net: {e}")))?;
    crate::net_arg::attach(&mut vm, &nets)
        .map_err(|e| ApiError::bad_request(format!("vm.boot: adding the network cards: {e}")))?;
    let vsock = config.vsock.as_ref().map(|v| vmm::VsockConfig {
        cid: v.cid,
        socket: v.socket.clone().into(),
    });
    crate::vsock_arg::attach(&mut vm, vsock.as_ref())
        .map_err(|e| ApiError::bad_request(format!("vm.boot: adding vsock: {e}")))?;
    let balloon = config.balloon.as_ref().map(|b| vmm::BalloonConfig {
        size: b.size,
        deflate_on_oom: b.deflate_on_oom,
        free_page_reporting: b.free_page_reporting,
    });
    let balloon = crate::balloon_arg::attach(&mut vm, balloon.as_ref())
        .map_err(|e| ApiError::bad_request(format!("vm.boot: adding the balloon: {e}")))?;
    vm.start()
        .map_err(|e| ApiError::internal(format!("vm.boot: starting the vCPUs: {e}")))?;
    Ok((vm, balloon))
}

/// The VMM's disk from the API's, through `--disk`'s own parser (one place knows the options).
fn disk_config(d: &api::ch::DiskConfig) -> Result<vmm::DiskConfig, ApiError> {
    if d.path.contains(',') {
        return Err(ApiError::bad_request(format!(
            "disk path {:?}: a ',' in the path is not supported",
            d.path
        )));
    }
    let format = match d.image_type {
        api::ch::ImageType::Raw => "raw",
        api::ch::ImageType::Qcow2 => "qcow2",
    };
    let readonly = if d.readonly { "on" } else { "off" };
    crate::disk_arg::parse_disk(&format!(
        "path={},format={format},readonly={readonly}",
        d.path
    ))
    .map_err(|e| ApiError::bad_request(format!("disk {}: {e}", d.path)))
}
