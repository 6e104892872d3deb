//! `thinvm vm ...`: the CLI of thinvmd (human tables by default, `--json` for scripts).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use api::client::{Client, ClientError};
use api::daemon::{DiskFormat, DiskSpec, RestartPolicy, VmSpec, VmStatus};
use serde_json::Value;

use crate::daemon_cmd::DEFAULT_SOCKET;
use crate::size::parse_size;
use crate::vm_console::console;

/// Options shared by every `thinvm vm` command.
#[derive(Clone, Debug, clap::Args)]
pub struct VmArgs {
    /// The daemon's socket.
    #[arg(long, global = true, value_name = "PATH", env = "THINVM_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: VmCommand,
}

/// The restart policy on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Restart {
    Never,
    OnFailure,
    Always,
}

/// `thinvm vm` subcommands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum VmCommand {
    /// Define a VM (takes `thinvm run`'s VM flags).
    Create {
        name: String,
        /// Kernel (bzImage or ELF vmlinux), inside the daemon's allowed folders.
        #[arg(long, value_name = "PATH")]
        kernel: PathBuf,
        #[arg(long, value_name = "PATH")]
        initrd: Option<PathBuf>,
        #[arg(long, value_name = "STR")]
        cmdline: Option<String>,
        #[arg(long, value_name = "N", default_value_t = 1)]
        cpus: u8,
        #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
        memory: u64,
        /// A virtio-blk disk: `path=FILE[,format=raw|qcow2][,readonly=on]`; repeatable.
        #[arg(long = "disk", value_name = "SPEC", value_parser = crate::disk_arg::parse_disk)]
        disks: Vec<vmm::DiskConfig>,
        /// A virtio-net card: `tap=NAME[,mac=MAC]`; repeatable. Without mac=, the daemon picks
        /// a locally administered MAC and keeps it.
        #[arg(long = "net", value_name = "SPEC", value_parser = crate::net_arg::parse_net)]
        nets: Vec<vmm::NetConfig>,
        /// Add a virtio-rng device.
        #[arg(long)]
        rng: bool,
        /// A virtio-vsock device: `cid=N` (3 to 4294967294, one VM's). The daemon places its
        /// socket at `STATE_DIR/vms/NAME/vsock.sock` (`thinvm vm show` prints it).
        #[arg(long, value_name = "cid=N", value_parser = crate::vsock_arg::parse_vm_vsock)]
        vsock: Option<api::daemon::VsockSpec>,
        /// A virtio-balloon: `[size=SIZE][,deflate_on_oom=on|off][,free_page_reporting=on|off]`;
        /// a bare `--balloon` is empty with free page reporting and deflate-on-OOM on.
        #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "",
              value_parser = crate::balloon_arg::parse_balloon)]
        balloon: Option<vmm::BalloonConfig>,
        /// What to do when the VM's VMM ends without a user's stop.
        #[arg(long, value_enum, default_value = "never")]
        restart: Restart,
        /// Start the VM when the daemon starts.
        #[arg(long)]
        autostart: bool,
        /// Start it right away.
        #[arg(long)]
        start: bool,
    },
    /// List VMs.
    List,
    /// Show one VM.
    Show { name: String },
    /// Start a VM.
    Start { name: String },
    /// Stop a VM: ACPI power button, then a hard stop after the timeout.
    Stop {
        name: String,
        /// Seconds to wait for the guest to power off (default: the daemon's).
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// Return at once instead of waiting until it has stopped.
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop a VM (as stop), then start it again.
    Restart {
        name: String,
        /// Seconds to wait for the guest to power off before the hard stop.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
    },
    /// Kill a VM's VMM (SIGKILL).
    Kill { name: String },
    /// Delete a VM that does not run.
    Delete { name: String },
    /// Pause a VM's vCPUs.
    Pause { name: String },
    /// Resume a paused VM.
    Resume { name: String },
    /// Print a VM's console log.
    Logs {
        name: String,
        /// Only the last BYTES bytes.
        #[arg(long, value_name = "BYTES")]
        tail: Option<u64>,
        /// Keep printing what the guest writes (Ctrl-C ends).
        #[arg(long, short)]
        follow: bool,
    },
    /// Attach to a VM's serial console (Ctrl-A x detaches; Ctrl-A Ctrl-A sends Ctrl-A).
    Console { name: String },
}

/// Runs a `thinvm vm` command; returns the exit code.
pub fn run(args: VmArgs) -> anyhow::Result<i32> {
    // Ctrl-C must end `logs --follow` and `console`.
    crate::daemon_cmd::unblock_stop_signals();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("creating the runtime")?;
    let client = Client::new(&args.socket);
    rt.block_on(dispatch(&client, args.json, args.cmd))
}

fn absolute(p: &Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("{}", p.display()))?;
    Ok(abs.display().to_string())
}

async fn call(c: &Client, method: &str, uri: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    c.call::<Value>(method, uri, body)
        .await
        .map_err(|e| match e {
            ClientError::Api(a) => anyhow::anyhow!("{} ({})", a.message, a.code),
            other => anyhow::anyhow!("{other}"),
        })
}

async fn dispatch(c: &Client, json: bool, cmd: VmCommand) -> anyhow::Result<i32> {
    let vm = |n: &str, op: &str| format!("/v1/vms/{n}{op}");
    let out = match cmd {
        VmCommand::Create {
            name,
            kernel,
            initrd,
            cmdline,
            cpus,
            memory,
            disks,
            nets,
            rng,
            vsock,
            balloon,
            restart,
            autostart,
            start,
        } => {
            if let Some(b) = &balloon {
                crate::balloon_arg::check(b, memory).map_err(anyhow::Error::msg)?;
            }
            let disks = disks
                .iter()
                .map(disk_spec)
                .collect::<anyhow::Result<Vec<_>>>()?;
            crate::net_arg::check_unique(&nets).map_err(anyhow::Error::msg)?;
            let nets = nets
                .iter()
                .map(crate::net_arg::net_spec)
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let spec = VmSpec {
                name: name.clone(),
                cpus,
                memory,
                kernel: absolute(&kernel)?,
                initrd: initrd.as_deref().map(absolute).transpose()?,
                cmdline,
                disks,
                nets,
                rng,
                vsock,
                balloon: balloon.as_ref().map(crate::balloon_arg::balloon_spec),
                restart: match restart {
                    Restart::Never => RestartPolicy::Never,
                    Restart::OnFailure => RestartPolicy::OnFailure,
                    Restart::Always => RestartPolicy::Always,
                },
                autostart,
            };
            let v = call(c, "POST", "/v1/vms", Some(&serde_json::to_value(&spec)?)).await?;
            if start {
                call(c, "POST", &vm(&name, "/start"), None).await?
            } else {
                v
            }
        }
        VmCommand::List => {
            let v = call(c, "GET", "/v1/vms", None).await?;
            if !json {
                let vms: Vec<VmStatus> = serde_json::from_value(v)?;
                print!("{}", table(&vms));
                return Ok(0);
            }
            v
        }
        VmCommand::Show { name } => {
            let v = call(c, "GET", &vm(&name, ""), None).await?;
            if !json {
                let s: VmStatus = serde_json::from_value(v)?;
                print!("{}{}", table(std::slice::from_ref(&s)), devices(&s));
                return Ok(0);
            }
            v
        }
        VmCommand::Start { name } => call(c, "POST", &vm(&name, "/start"), None).await?,
        VmCommand::Stop {
            name,
            timeout,
            no_wait,
        } => {
            let q = timeout.map(|t| format!("?timeout={t}")).unwrap_or_default();
            let v = call(c, "POST", &vm(&name, &format!("/stop{q}")), None).await?;
            if no_wait {
                v
            } else {
                let limit = Duration::from_secs_f64(timeout.unwrap_or(30.0) + 30.0);
                wait_for_end(c, &name, limit).await?
            }
        }
        VmCommand::Restart { name, timeout } => {
            let q = timeout.map(|t| format!("?timeout={t}")).unwrap_or_default();
            call(c, "POST", &vm(&name, &format!("/restart{q}")), None).await?
        }
        VmCommand::Kill { name } => call(c, "POST", &vm(&name, "/kill"), None).await?,
        VmCommand::Delete { name } => {
            call(c, "DELETE", &vm(&name, ""), None).await?;
            if !json {
                println!("deleted {name}");
            }
            return Ok(0);
        }
        VmCommand::Pause { name } => call(c, "POST", &vm(&name, "/pause"), None).await?,
        VmCommand::Resume { name } => call(c, "POST", &vm(&name, "/resume"), None).await?,
        VmCommand::Logs { name, tail, follow } => {
            logs(c, &name, tail, follow).await?;
            return Ok(0);
        }
        VmCommand::Console { name } => {
            console(c, &name).await?;
            return Ok(0);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if let Ok(s) = serde_json::from_value::<VmStatus>(out.clone()) {
        print!("{}", table(&[s]));
    }
    Ok(0)
}

async fn wait_for_end(c: &Client, name: &str, limit: Duration) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    loop {
        let v = call(c, "GET", &format!("/v1/vms/{name}"), None).await?;
        let s: VmStatus = serde_json::from_value(v.clone())?;
        if !s.state.has_process() {
            return Ok(v);
        }
        if t0.elapsed() > limit {
            bail!("{name} is still {} after {limit:?}", s.state.as_str());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn logs(c: &Client, name: &str, tail: Option<u64>, follow: bool) -> anyhow::Result<()> {
    let mut printed: Option<usize> = None;
    loop {
        let r = c
            .request("GET", &format!("/v1/vms/{name}/logs"), None)
            .await?;
        if r.status != 200 {
            let e = api::client::error_from(r.status, &r.body);
            bail!("{} ({})", e.message, e.code);
        }
        let from = match printed {
            None => tail.map_or(0, |t| {
                r.body
                    .len()
                    .saturating_sub(usize::try_from(t).unwrap_or(usize::MAX))
            }),
            // Shorter than what was printed: the log was rotated, print it all.
            Some(p) if p > r.body.len() => 0,
            Some(p) => p,
        };
        std::io::stdout().write_all(r.body.get(from..).unwrap_or_default())?;
        std::io::stdout().flush()?;
        if !follow {
            return Ok(());
        }
        printed = Some(r.body.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A VM's disks, network cards, vsock and balloon, one line each (`thinvm vm show`).
fn devices(vm: &VmStatus) -> String {
    let spec = &vm.spec;
    let mut out = String::new();
    for (i, d) in spec.disks.iter().enumerate() {
        let ro = if d.readonly { ",readonly=on" } else { "" };
        let format = serde_json::to_value(d.format).unwrap_or_default();
        let format = format.as_str().unwrap_or("raw");
        out += &format!("disk{i}  path={},format={format}{ro}\n", d.path);
    }
    for (i, n) in spec.nets.iter().enumerate() {
        let mac = n.mac.as_deref().unwrap_or("-");
        out += &format!("net{i}   tap={},mac={mac}\n", n.tap);
    }
    if let Some(v) = &spec.vsock {
        let socket = vm.vsock_socket.as_deref().unwrap_or("-");
        out += &format!("vsock   cid={},socket={socket}\n", v.cid);
    }
    if let Some(b) = &spec.balloon {
        let on = |b: bool| if b { "on" } else { "off" };
        out += &format!(
            "balloon size={},deflate_on_oom={},free_page_reporting={}\n",
            b.size,
            on(b.deflate_on_oom),
            on(b.free_page_reporting)
        );
    }
    out
}

/// The daemon's disk from `--disk` (a relative path is made absolute).
fn disk_spec(d: &vmm::DiskConfig) -> anyhow::Result<DiskSpec> {
    let format = match d.format {
        storage::Format::Raw => DiskFormat::Raw,
        storage::Format::Qcow2 => DiskFormat::Qcow2,
        other => bail!(
            "{}: format {other:?} cannot be a VM's disk",
            d.path.display()
        ),
    };
    Ok(DiskSpec {
        path: absolute(&d.path)?,
        format,
        readonly: d.read_only,
    })
}

/// The human table of `list`.
pub fn table(vms: &[VmStatus]) -> String {
    let mut s = format!(
        "{:<24} {:<9} {:>4} {:>9} {:>8} {:>8}\n",
        "NAME", "STATE", "CPUS", "MEMORY", "PID", "RESTARTS"
    );
    for v in vms {
        let pid = v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        s += &format!(
            "{:<24} {:<9} {:>4} {:>8}M {:>8} {:>8}\n",
            v.spec.name,
            v.state.as_str(),
            v.spec.cpus,
            v.spec.memory >> 20,
            pid,
            v.restarts
        );
    }
    s
}

#[cfg(test)]
#[path = "vm_cmd_tests.rs"]
mod tests;
