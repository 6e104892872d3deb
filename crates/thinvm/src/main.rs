//! The `thinvm` command.

mod balloon_arg;
mod bench_api;
mod bench_host;
mod daemon_cmd;
mod disk_arg;
mod image_cmd;
mod nested;
mod net_arg;
mod run;
mod size;
mod vm_cmd;
mod vm_console;
mod vmm_api;
mod vmm_cmd;
mod vmm_console;
mod vsock_arg;

use clap::{Parser, Subcommand};

/// thinvm: a thin KVM hypervisor. Boots unmodified Linux guests with a serial console.
#[derive(Parser, Debug)]
#[command(name = "thinvm", version, about, long_about = None)]
struct Cli {
    /// Log level for thinvm's own messages (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", env = "THINVM_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a VM with its serial console on this terminal.
    ///
    /// Exit codes: 0 the guest powered off, 2 bad input or unusable host, 3 the guest rebooted,
    /// 4 the guest kernel panicked, 5 triple fault or internal error.
    /// On an interactive terminal, Ctrl-A x ends the VM (Ctrl-A Ctrl-A sends Ctrl-A).
    Run(run::RunArgs),
    /// Create, inspect, check, convert and commit disk images (raw, qcow2; vhd/vhdx as sources).
    Image {
        #[command(subcommand)]
        cmd: image_cmd::ImageCommand,
    },
    /// Download Debian's kernel and build the default VM's initramfs (run by ./setup.sh).
    Prepare,
    /// A VMM that serves the per-VM API (Cloud Hypervisor's /api/v1 subset) on a Unix socket and
    /// waits for vm.create and vm.boot.
    Vmm(vmm_cmd::VmmArgs),
    /// Run thinvmd, the host service, in the foreground.
    Daemon(daemon_cmd::DaemonArgs),
    /// Manage the daemon's VMs: create, list, show, start, stop, restart, kill, delete, pause,
    /// resume, logs, console.
    Vm(vm_cmd::VmArgs),
    /// Host-side boot benchmark figures (start-up, exit round trip vs a bare KVM_RUN loop).
    #[command(hide = true)]
    BenchHost {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 20_000)]
        exits: u64,
    },
    /// One start-up measurement (run by bench-host).
    #[command(hide = true)]
    BenchStartup,
    /// API latency against a running daemon (run by `cargo xtask bench density`).
    #[command(hide = true)]
    BenchApi {
        #[arg(
            long,
            env = "THINVM_SOCKET",
            default_value = "/run/thinvm/thinvmd.sock"
        )]
        socket: std::path::PathBuf,
        #[arg(long, default_value_t = 400)]
        requests: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let code = match cli.command {
        Command::Run(args) => match run::run(args) {
            Ok(code) => code,
            Err(f) => {
                eprintln!("thinvm: error: {:#}", f.error);
                f.code
            }
        },
        Command::Vmm(args) => report(vmm_cmd::run(args)),
        Command::Daemon(args) => report(daemon_cmd::run(args)),
        Command::Vm(args) => report(vm_cmd::run(args)),
        Command::BenchHost { rounds, exits } => report(bench_host::run(rounds, exits)),
        Command::BenchStartup => report(bench_host::startup_child()),
        Command::BenchApi { socket, requests } => report(bench_api::run(&socket, requests)),
        Command::Prepare => report(nested::prepare()),
        Command::Image { cmd } => match image_cmd::run(cmd) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("thinvm: error: {e:#}");
                2
            }
        },
    };
    std::process::exit(code);
}

/// The exit code of a command that returns one, printing its error.
fn report(r: anyhow::Result<i32>) -> i32 {
    r.unwrap_or_else(|e| {
        eprintln!("thinvm: error: {e:#}");
        2
    })
}
