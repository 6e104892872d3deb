//! `cargo xtask`: the nested testbed's smoke test, the thinvm end-to-end scenarios and the boot
//! benchmark.

mod bench;
mod bench_density;
mod bench_io;
mod e2e;
mod selftest;
mod smoke;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Project tasks that need the nested testbed.
#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Echo the outer console while it runs.
    #[arg(long, global = true)]
    echo: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot the outer machine and run the guest with QEMU as inner VMM (`info.sh`).
    TestbedSmoke,
    /// Prepare the testbed only (host packages, kernel download, images): CI's dependency step.
    TestbedPrepare,
    /// Check the testbed's machinery: statuses, timeout, fault retry, scratch disk, exit codes.
    TestbedSelftest,
    /// Boot the guest with thinvm in the testbed, interactively on this terminal; the exit code
    /// is thinvm's. Arguments after `--` go to `thinvm run`.
    TestbedRun {
        /// The thinvm binary (default: build it with `cargo build --profile ci -p thinvm`).
        #[arg(long)]
        thinvm: Option<PathBuf>,
        /// vCPUs of the outer machine.
        #[arg(long, default_value_t = 1)]
        outer_smp: u32,
        /// Arguments for `thinvm run` (after the guest kernel and initramfs).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the thinvm end-to-end scenarios in the testbed.
    E2e {
        /// The thinvm binary (default: build it with `cargo build --profile ci -p thinvm`).
        #[arg(long)]
        thinvm: Option<PathBuf>,
        /// Run only the cases whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time to the guest's /init marker and VMM memory: thinvm vs QEMU pc vs QEMU microvm.
    Boot {
        /// Interleaved rounds.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// The thinvm binary (default: build it with `cargo build --profile ci -p thinvm`).
        #[arg(long)]
        thinvm: Option<PathBuf>,
        /// Skip thinvm (QEMU only).
        #[arg(long)]
        no_thinvm: bool,
    },
    /// Disk (fio) and network (iperf3) throughput in the guest: thinvm vs QEMU with
    /// virtio-blk-pci and virtio-net-pci, vhost-net off and on; thinvm with and without vhost=on.
    Io {
        /// Interleaved rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds per fio job and per iperf3 direction.
        #[arg(long, default_value_t = 5)]
        secs: u32,
        /// The thinvm binary (default: build it with `cargo build --profile ci -p thinvm`).
        #[arg(long)]
        thinvm: Option<PathBuf>,
    },
    /// Many VMs: start rate and API latency through thinvmd, memory per idle VM for thinvm,
    /// thinvm with free page reporting and QEMU.
    Density {
        /// VMs of each kind.
        #[arg(long, default_value_t = 10)]
        vms: u32,
        /// The thinvm binary (default: build it with `cargo build --profile ci -p thinvm`).
        #[arg(long)]
        thinvm: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber_init();
    let cli = Cli::parse();
    let ok = match cli.command {
        Cmd::TestbedSmoke => smoke::run(cli.echo)?,
        Cmd::TestbedPrepare => {
            let config = testbed::TestbedConfig {
                outer: testbed::OuterSpec {
                    with_qemu: true,
                    ..testbed::OuterSpec::default()
                },
                ..testbed::TestbedConfig::default()
            };
            let tb = testbed::Testbed::new(&config)?;
            let a = tb.assets();
            println!(
                "kernel {} ({}), cache {}",
                a.kernel_release,
                a.bzimage.display(),
                a.cache_dir.display()
            );
            true
        }
        Cmd::TestbedSelftest => selftest::run(cli.echo)?,
        Cmd::TestbedRun {
            thinvm,
            outer_smp,
            args,
        } => {
            let config = testbed::TestbedConfig {
                outer: testbed::OuterSpec {
                    thinvm: Some(thinvm_binary(thinvm)?),
                    ..testbed::OuterSpec::default()
                },
                ..testbed::TestbedConfig::default()
            };
            let tb = testbed::Testbed::new(&config)?;
            let opts = testbed::OuterOptions {
                smp: outer_smp,
                ..testbed::OuterOptions::default()
            };
            std::process::exit(tb.run_interactive(&opts, &args)?);
        }
        Cmd::E2e { thinvm, only } => e2e::run(thinvm, only.as_deref(), cli.echo)?,
        Cmd::Bench {
            what:
                BenchCmd::Boot {
                    rounds,
                    thinvm,
                    no_thinvm,
                },
        } => bench::boot(rounds, thinvm, no_thinvm, cli.echo)?,
        Cmd::Bench {
            what:
                BenchCmd::Io {
                    rounds,
                    secs,
                    thinvm,
                },
        } => bench_io::io(rounds, secs, thinvm, cli.echo)?,
        Cmd::Bench {
            what: BenchCmd::Density { vms, thinvm },
        } => bench_density::density(vms, thinvm, cli.echo)?,
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Logs from the testbed library go to stderr (RUST_LOG, default info).
fn tracing_subscriber_init() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Builds thinvm with the shared CI profile unless a binary is given.
pub fn thinvm_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        anyhow::ensure!(p.is_file(), "thinvm binary {} not found", p.display());
        return Ok(p);
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--profile", "ci", "-p", "thinvm"])
        .status()?;
    anyhow::ensure!(status.success(), "cargo build -p thinvm failed: {status}");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or(root.join("target"));
    Ok(target.join("ci").join("thinvm"))
}
