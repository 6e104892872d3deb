//! `thinvm run`: boot one VM with its console on this terminal.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use vmm::console::{ConsoleInput, RawTerminal};
use vmm::{HostKvm, Payload, Vm, VmConfig};

use crate::size::parse_size;

/// The command line a guest gets when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Where to run the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TestbedMode {
    /// Run on this host's KVM, or inside the nested testbed when this host's KVM cannot boot
    /// unmodified guests (a PVM).
    Auto,
    /// Always run inside the nested testbed (QEMU emulating an AMD-V machine).
    Always,
    /// Never use the testbed: fail on a host that cannot boot unmodified guests.
    Never,
}

/// Options of `thinvm run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Linux kernel to boot: a bzImage or an ELF vmlinux (PVH entry when it has the note).
    /// Without it, thinvm boots its default VM: the Debian kernel installed by ./setup.sh and a
    /// busybox initramfs with an interactive shell.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (a cpio archive, optionally compressed).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Number of vCPUs (1 to the host's KVM limit).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: usize,
    /// Guest memory, e.g. 512M or 2G (binary units).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,
    /// A virtio-blk disk: `path=FILE[,format=raw|qcow2][,readonly=on][,serial=ID]`; repeatable.
    /// The format is raw unless given (never probed from the file).
    #[arg(long = "disk", value_name = "SPEC", value_parser = crate::disk_arg::parse_disk)]
    pub disks: Vec<vmm::DiskConfig>,
    /// Add a virtio-rng device fed from the host's getrandom (the guest's /dev/hwrng).
    #[arg(long)]
    pub rng: bool,
    /// A virtio-net card: `tap=NAME[,mac=MAC][,vhost=on]` or `fd=N[,...]` (an inherited TAP);
    /// repeatable. Without mac=, a locally administered MAC derived from the TAP's name;
    /// vhost=on lets the kernel's vhost-net serve the rings (needs /dev/vhost-net).
    #[arg(long = "net", value_name = "SPEC", value_parser = crate::net_arg::parse_net)]
    pub nets: Vec<vmm::NetConfig>,
    /// A virtio-vsock device: `cid=N,socket=PATH`. The VMM listens on the Unix socket PATH: a
    /// host process writes `CONNECT <port>\n` and reads `OK <host port>\n` to reach the guest's
    /// port; a guest connection to port P reaches the Unix socket `PATH_P`.
    #[arg(long, value_name = "SPEC", value_parser = crate::vsock_arg::parse_vsock)]
    pub vsock: Option<vmm::VsockConfig>,
    /// A virtio-balloon: `--balloon [size=SIZE][,deflate_on_oom=on|off][,free_page_reporting=on|off]`.
    /// A bare `--balloon` is an empty balloon with free page reporting and deflate-on-OOM on;
    /// its size changes at run time with `PUT /api/v1/vm.resize` (`--api-socket`).
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "",
          value_parser = crate::balloon_arg::parse_balloon)]
    pub balloon: Option<vmm::BalloonConfig>,
    /// Where to run: this host's KVM, or the nested testbed (auto picks the testbed on a PVM host).
    #[arg(long, value_enum, default_value = "auto")]
    pub testbed: TestbedMode,
    /// Also serve the per-VM API (Cloud Hypervisor's /api/v1 subset) on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
}

/// An error with its exit code (2 = bad input or unusable host, 5 = internal).
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 2,
            error: e.into(),
        }
    }
}

/// Runs the VM; returns the process exit code.
pub fn run(args: RunArgs) -> Result<i32, Failure> {
    if args.cpus == 0 {
        return Err(anyhow::anyhow!("--cpus must be at least 1").into());
    }
    if let Some(b) = &args.balloon {
        crate::balloon_arg::check(b, args.memory).map_err(|e| anyhow::anyhow!(e))?;
    }
    let host = vmm::probe_host();
    let use_testbed = match (args.testbed, host) {
        (TestbedMode::Always, _) => true,
        // The default VM goes into the testbed; a user's kernel is checked (built into a VM)
        // first, so bad input gets its own error, then refused with the PVM explanation.
        (TestbedMode::Auto, HostKvm::Pvm) => args.kernel.is_none(),
        (_, HostKvm::Absent) => {
            return Err(anyhow::anyhow!(
            "/dev/kvm does not exist: load kvm_intel or kvm_amd, or run inside a VM with nested \
                 virtualization"
        )
            .into())
        }
        _ => false,
    };
    let devices = !args.disks.is_empty() || args.rng || !args.nets.is_empty();
    if use_testbed && (devices || args.vsock.is_some() || args.balloon.is_some()) {
        return Err(anyhow::anyhow!(
            "--disk, --rng, --net, --vsock and --balloon are not passed into the nested testbed \
             yet: run thinvm inside it"
        )
        .into());
    }
    if use_testbed {
        return crate::nested::run_in_testbed(&args);
    }
    let (kernel, initrd) = resolve_payload(&args)?;
    run_local(kernel, initrd, &args)
}

/// The kernel and initrd to boot: the user's, or the default VM's.
fn resolve_payload(args: &RunArgs) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    match &args.kernel {
        Some(k) => Ok((k.clone(), args.initrd.clone())),
        None => {
            if args.initrd.is_some() {
                bail!("--initrd needs --kernel");
            }
            let vm = crate::nested::default_vm().context("preparing the default VM")?;
            Ok((vm.kernel, Some(vm.initrd)))
        }
    }
}

fn run_local(kernel: PathBuf, initrd: Option<PathBuf>, args: &RunArgs) -> Result<i32, Failure> {
    let cfg = VmConfig {
        payload: Payload::Linux {
            kernel,
            initrd,
            cmdline: args.cmdline.clone(),
        },
        cpus: args.cpus,
        memory: args.memory,
    };
    // Before the VM's threads exist, so they all inherit the mask (and only the VM path blocks
    // them: child processes such as the testbed's QEMU must not inherit a blocked SIGTERM).
    vmm::signals::block_stop_signals();
    let console: Box<dyn Write + Send> = Box::new(std::io::stdout());
    let mut vm = Vm::new(&cfg, console).map_err(|e| Failure {
        code: if e.is_bad_input() { 2 } else { 5 },
        error: e.into(),
    })?;
    crate::disk_arg::attach(&mut vm, &args.disks, args.rng).map_err(|e| Failure {
        code: if e.is_bad_input() { 2 } else { 5 },
        error: e.into(),
    })?;
    crate::net_arg::check_unique(&args.nets).map_err(|e| Failure {
        code: 2,
        error: anyhow::anyhow!(e),
    })?;
    crate::net_arg::attach(&mut vm, &args.nets).map_err(|e| Failure {
        code: if e.is_bad_input() { 2 } else { 5 },
        error: e.into(),
    })?;
    crate::vsock_arg::attach(&mut vm, args.vsock.as_ref()).map_err(|e| Failure {
        code: if e.is_bad_input() { 2 } else { 5 },
        error: e.into(),
    })?;
    let balloon =
        crate::balloon_arg::attach(&mut vm, args.balloon.as_ref()).map_err(|e| Failure {
            code: if e.is_bad_input() { 2 } else { 5 },
            error: e.into(),
        })?;
    if vmm::probe_host() == HostKvm::Pvm {
        return Err(anyhow::anyhow!(
            "this host's /dev/kvm is a PVM (kvm_pvm): it emulates guest kernel code and cannot \
             boot an unmodified Linux kernel; `thinvm run` without --kernel runs the default VM \
             inside the nested testbed"
        )
        .into());
    }
    vmm::signals::watch_stop_signals(vm.exit_signal().clone())?;
    let stdin = std::io::stdin().as_raw_fd();
    let raw = RawTerminal::enable(stdin)?;
    let input = ConsoleInput::start(
        stdin,
        Arc::clone(vm.serial()),
        vm.exit_signal().clone(),
        raw.is_some(),
    )?;
    vm.start().map_err(|e| Failure {
        code: 5,
        error: e.into(),
    })?;
    let reason = match &args.api_socket {
        Some(socket) => {
            let mut config = api_config(&cfg, args.balloon.as_ref());
            config.vsock = args.vsock.as_ref().map(|v| api::ch::VsockConfig {
                cid: v.cid,
                socket: v.socket.display().to_string(),
            });
            crate::vmm_cmd::serve_running(&vm, config, balloon, socket)?
        }
        None => vm.wait(),
    };
    drop(input);
    drop(vm);
    drop(raw);
    let _ = std::io::stdout().flush();
    eprintln!("thinvm: {}", reason.describe());
    Ok(reason.exit_code())
}

/// The per-VM API's view of a VM started from the command line.
fn api_config(cfg: &VmConfig, balloon: Option<&vmm::BalloonConfig>) -> api::ch::VmConfig {
    let payload = match &cfg.payload {
        Payload::Linux {
            kernel,
            initrd,
            cmdline,
        } => api::ch::PayloadConfig {
            kernel: Some(kernel.display().to_string()),
            initramfs: initrd.as_ref().map(|p| p.display().to_string()),
            cmdline: Some(cmdline.clone()),
        },
        Payload::Raw { .. } => api::ch::PayloadConfig::default(),
    };
    let mut c = api::ch::VmConfig::with_payload(payload);
    let cpus = u8::try_from(cfg.cpus).unwrap_or(u8::MAX);
    c.cpus = api::ch::CpusConfig {
        boot_vcpus: cpus,
        max_vcpus: cpus,
    };
    c.memory.size = cfg.memory;
    c.serial.mode = api::ch::ConsoleMode::Tty;
    c.balloon = balloon.map(|b| api::ch::BalloonConfig {
        size: b.size,
        deflate_on_oom: b.deflate_on_oom,
        free_page_reporting: b.free_page_reporting,
    });
    c
}
