//! `thinvm bench-host`: the host-side figures of the boot benchmark, on the host's own /dev/kvm:
//! start-up (process start to the guest's first exit) and the exit round trip through thinvm's
//! path beside a bare KVM_RUN loop. Run by `cargo xtask bench boot`; hidden from `--help`.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use vmm::bench::{bare_round_trip, thinvm_round_trip, ExitKind};

/// Nanoseconds on the system-wide monotonic clock (comparable across processes).
pub fn monotonic_ns() -> u64 {
    // SAFETY: zeroed timespec is valid; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `thinvm bench-startup`: build the smallest VM, run it to its first exit, print the time.
pub fn startup_child() -> anyhow::Result<i32> {
    let mut now = 0;
    let reason = vmm::bench::first_exit(|| now = monotonic_ns())?;
    if reason != vmm::ExitReason::PowerOff {
        bail!("the start-up guest ended with: {}", reason.describe());
    }
    println!("first_exit_ns={now}");
    Ok(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn startup_once() -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("finding the thinvm binary")?;
    let before = monotonic_ns();
    let out = Command::new(exe)
        .arg("bench-startup")
        .output()
        .context("running thinvm bench-startup")?;
    if !out.status.success() {
        bail!(
            "thinvm bench-startup failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let at: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("first_exit_ns="))
        .and_then(|v| v.trim().parse().ok())
        .context("no first_exit_ns line from thinvm bench-startup")?;
    Ok(at.saturating_sub(before) as f64 / 1e6)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs every host figure `rounds` times, interleaved, and prints medians and ratios.
pub fn run(rounds: usize, exits: u64) -> anyhow::Result<i32> {
    let mut startup = Vec::new();
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("pio", Vec::new(), Vec::new()),
        ("mmio", Vec::new(), Vec::new()),
    ];
    for _ in 0..rounds.max(1) {
        startup.push(startup_once()?);
        for (name, thin, bare) in rows.iter_mut() {
            let kind = if *name == "pio" {
                ExitKind::Pio
            } else {
                ExitKind::Mmio
            };
            bare.push(us(bare_round_trip(kind, exits)?));
            thin.push(us(thinvm_round_trip(kind, exits)?));
        }
    }
    println!(
        "host: {} rounds, {exits} exits per round and kind",
        rounds.max(1)
    );
    println!(
        "@@HOST startup_ms_median={:.2} target_ms=10",
        median(&mut startup)
    );
    for (name, thin, bare) in rows.iter_mut() {
        let (t, b) = (median(thin), median(bare));
        println!(
            "@@HOST exit={name} thinvm_us={t:.2} bare_us={b:.2} ratio={:.3} target_ratio=1.10",
            if b > 0.0 { t / b } else { 0.0 }
        );
    }
    Ok(0)
}
