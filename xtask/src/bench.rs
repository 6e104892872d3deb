//! `cargo xtask bench boot`: in one outer boot, interleaved rounds of thinvm, QEMU `-M pc` and
//! QEMU `-M microvm` booting the same bzImage and initramfs. Each run is wrapped by
//! `thinvm-measure` (in the outer machine), which prints the time from starting the VMM to the
//! guest's `THINVM-GUEST-INIT` line and the peaks of the VMM's RssAnon/RssFile/RssShmem.
//!
//! Memory: guest RAM is memfd-backed in all three VMMs (thinvm by design, QEMU through
//! `-object memory-backend-memfd`), so it shows as RssShmem; the VMM's own memory is reported
//! as RssAnon + RssFile (peaks sampled every 0.2 s), with guest RAM excluded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use testbed::{OuterOptions, OuterSpec, Scenario, Testbed, TestbedConfig};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet thinvm.test=bench";
const MEM_MIB: u32 = 256;

/// The VMMs compared, with the command each runs (after `thinvm-measure LABEL`).
fn vmms(with_thinvm: bool) -> Vec<(&'static str, String)> {
    let qemu = |machine: &str, extra: &str| {
        format!(
            "\"$QEMU\" -enable-kvm -M {machine} -nodefaults {extra} -cpu host -m {MEM_MIB} -smp 1 \
             -object memory-backend-memfd,id=ram,size={MEM_MIB}M -machine memory-backend=ram \
             -display none -serial stdio -no-reboot -kernel \"$GUEST_BZIMAGE\" \
             -initrd \"$GUEST_INITRD\" -append \"$CMDLINE\""
        )
    };
    let mut v = Vec::new();
    if with_thinvm {
        let cmd = format!(
            "\"$THINVM\" run --testbed never --kernel \"$GUEST_BZIMAGE\" --initrd \"$GUEST_INITRD\" \
             --cpus 1 --memory {MEM_MIB}M --cmdline \"$CMDLINE\""
        );
        v.push(("thinvm", cmd));
        // The same kernel uncompressed (the ELF vmlinux cut from the bzImage), entered by PVH:
        // no decompression inside the guest.
        let pvh = format!(
            "\"$THINVM\" run --testbed never --kernel \"$GUEST_VMLINUX\" --initrd \"$GUEST_INITRD\" \
             --cpus 1 --memory {MEM_MIB}M --cmdline \"$CMDLINE\""
        );
        v.push(("thinvm-pvh", pvh));
    }
    v.push(("qemu-pc", qemu("pc", "")));
    v.push(("qemu-microvm", qemu("microvm,rtc=on", "-device i8042")));
    v
}

fn script(label: &str, cmd: &str) -> String {
    // A VMM that failed once is skipped in later rounds (no point waiting for its timeouts).
    format!(
        "CMDLINE='{CMDLINE}'\n\
         [ -e /tmp/broken-{label} ] && {{ echo '{label} failed an earlier round: skipped'; exit 125; }}\n\
         thinvm-measure {label} {cmd}\nrc=$?\n[ $rc -eq 0 ] || touch /tmp/broken-{label}\nexit $rc\n"
    )
}

/// One `@@BENCH ...@@` line.
#[derive(Debug, Default, Clone, PartialEq)]
struct Sample {
    label: String,
    init_ms: i64,
    rc: i64,
    anon_kb: i64,
    file_kb: i64,
    shmem_kb: i64,
}

fn parse_bench(log: &str) -> Option<Sample> {
    let line = log
        .lines()
        .find_map(|l| l.split_once("@@BENCH ").map(|(_, rest)| rest))?;
    let fields: BTreeMap<&str, &str> = line
        .trim_end()
        .trim_end_matches("@@")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let num = |k: &str| fields.get(k).and_then(|v| v.parse::<i64>().ok());
    Some(Sample {
        label: fields.get("label")?.to_string(),
        init_ms: num("init_ms")?,
        rc: num("rc")?,
        anon_kb: num("rss_anon_kb")?,
        file_kb: num("rss_file_kb")?,
        shmem_kb: num("rss_shmem_kb")?,
    })
}

/// The median of `v` (the mean of the middle two for an even count).
pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0),
    }
}

/// Runs the boot benchmark; true if every VMM produced at least one good sample.
pub fn boot(rounds: u32, thinvm: Option<PathBuf>, no_thinvm: bool, echo: bool) -> Result<bool> {
    let thinvm = if no_thinvm {
        None
    } else {
        Some(crate::thinvm_binary(thinvm)?)
    };
    let config = TestbedConfig {
        outer: OuterSpec {
            with_qemu: true,
            thinvm: thinvm.clone(),
            ..OuterSpec::default()
        },
        ..TestbedConfig::default()
    };
    let tb = Testbed::new(&config)?;
    let vmms = vmms(thinvm.is_some());
    let mut scenarios = Vec::new();
    for round in 0..rounds.max(1) as usize {
        for i in 0..vmms.len() {
            // Rotate the order each round so no VMM always runs first.
            let Some((label, cmd)) = vmms.get((i + round) % vmms.len()) else {
                continue;
            };
            scenarios.push(Scenario {
                name: format!("r{}-{label}", round + 1),
                script: script(label, cmd),
                timeout: Duration::from_secs(120),
            });
        }
    }
    let opts = OuterOptions {
        echo,
        ..OuterOptions::default()
    };
    let results = tb.run(&opts, &scenarios)?;
    let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    for r in &results {
        match parse_bench(&r.log) {
            Some(s) if s.rc == 0 && s.init_ms >= 0 => {
                println!(
                    "{:<18} init {:>6} ms  anon {:>6} KiB  file {:>6} KiB  shmem {:>7} KiB",
                    r.name, s.init_ms, s.anon_kb, s.file_kb, s.shmem_kb
                );
                if let Some((label, _)) = vmms.iter().find(|(l, _)| *l == s.label) {
                    samples.entry(label).or_default().push(s);
                }
            }
            other => println!(
                "{:<18} no good sample ({:?}, {:?})",
                r.name, r.status, other
            ),
        }
    }
    if let Some(log) = results.first().map(|r| r.console_log.display().to_string()) {
        println!("console log: {log}");
    }
    report(&vmms, &samples);
    let host_ok = match &thinvm {
        Some(bin) => host_part(bin),
        None => true,
    };
    Ok(host_ok && vmms.iter().all(|(l, _)| samples.contains_key(l)))
}

/// The host part: start-up and exit round trip on this host's own /dev/kvm (`thinvm bench-host`).
fn host_part(thinvm: &std::path::Path) -> bool {
    println!("\nhost (own /dev/kvm): start-up and exit round trip vs a bare KVM_RUN loop");
    match std::process::Command::new(thinvm)
        .args(["bench-host", "--rounds", "7"])
        .status()
    {
        Ok(s) => s.success(),
        Err(e) => {
            println!("cannot run {}: {e}", thinvm.display());
            false
        }
    }
}

fn report(vmms: &[(&str, String)], samples: &BTreeMap<&str, Vec<Sample>>) {
    println!("\nmedians ({MEM_MIB} MiB guest, 1 vCPU, cmdline '{CMDLINE}'):");
    println!("VMM memory = peak RssAnon + peak RssFile of the VMM process; guest RAM is memfd");
    println!("(RssShmem) in every VMM here and is excluded. The outer rootfs is tmpfs, so mapped");
    println!("binaries and libraries count as RssShmem too: the figure is the VMM's private heap.");
    let med = |label: &str, f: fn(&Sample) -> i64| {
        samples
            .get(label)
            .and_then(|v| median(v.iter().map(|s| f(s) as f64).collect()))
    };
    for (label, _) in vmms {
        let v = samples.get(label).map(Vec::as_slice).unwrap_or_default();
        let (Some(t), Some(m)) = (
            med(label, |s| s.init_ms),
            med(label, |s| s.anon_kb + s.file_kb),
        ) else {
            println!("  {label:<13} no samples");
            continue;
        };
        let lo = v.iter().map(|s| s.init_ms).min().unwrap_or_default() as f64 / 1000.0;
        let hi = v.iter().map(|s| s.init_ms).max().unwrap_or_default() as f64 / 1000.0;
        let shmem = med(label, |s| s.shmem_kb).unwrap_or_default() / 1024.0;
        println!(
            "  {label:<13} to /init {:>6.2} s ({lo:.2}..{hi:.2})  VMM memory {:>6.1} MiB  \
             (RssShmem {shmem:.0} MiB; {} samples)",
            t / 1000.0,
            m / 1024.0,
            v.len()
        );
    }
    for ours in ["thinvm", "thinvm-pvh"] {
        for peer in ["qemu-pc", "qemu-microvm"] {
            let ratio = |f: fn(&Sample) -> i64| Some(med(ours, f)? / med(peer, f)?);
            if let (Some(t), Some(m)) = (ratio(|s| s.init_ms), ratio(|s| s.anon_kb + s.file_kb)) {
                println!("  {ours}/{peer}: time {t:.2}x, memory {m:.2}x");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_line_parsing() {
        let log = "x\n@@BENCH label=qemu-pc init_ms=6230 rc=0 rss_anon_kb=40000 rss_file_kb=100 \
                   rss_shmem_kb=70000 hwm_kb=110000@@\r\n";
        let s = parse_bench(log).unwrap();
        assert_eq!(s.label, "qemu-pc");
        assert_eq!(
            (s.init_ms, s.rc, s.anon_kb, s.file_kb, s.shmem_kb),
            (6230, 0, 40000, 100, 70000)
        );
        assert_eq!(parse_bench("@@BENCH label=x init_ms=oops@@"), None);
        assert_eq!(parse_bench("nothing"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn scripts_skip_after_failure_and_measure() {
        let v = vmms(true);
        let labels: Vec<&str> = v.iter().map(|(l, _)| *l).collect();
        assert_eq!(labels, ["thinvm", "thinvm-pvh", "qemu-pc", "qemu-microvm"]);
        let s = script(v[0].0, &v[0].1);
        assert!(s.contains("thinvm-measure thinvm \"$THINVM\" run"), "{s}");
        assert!(s.contains("/tmp/broken-thinvm"), "{s}");
        assert!(v[1].1.contains("$GUEST_VMLINUX"), "{}", v[1].1);
        assert!(v[3].1.contains("microvm,rtc=on") && v[3].1.contains("-device i8042"));
        assert!(vmms(false).iter().all(|(l, _)| !l.starts_with("thinvm")));
    }
}
