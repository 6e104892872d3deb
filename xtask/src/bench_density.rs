//! `cargo xtask bench density`: many VMs on one host, in one outer boot of the testbed.
//!
//! - thinvmd: N VM definitions (128 MiB, 1 vCPU, Debian's kernel, the busybox initramfs whose
//!   guest waits for the ACPI power button) started at once; the time from the first start
//!   call until every guest's console shows it is ready gives VMs started per second. Then,
//!   idle, the host memory of the VMM processes (VmRSS: the VMM's own memory plus the guest
//!   RAM it touched, which is memfd and shows as RssShmem), and the daemon's API latency
//!   (`thinvm bench-api`: p50/p99 over 400 requests) while they run. All are stopped by the
//!   power button.
//! - The same N guests as plain `thinvm run` processes with the balloon's free page reporting
//!   (`--balloon`), and as plain QEMU processes (`-M pc`, memfd RAM): memory per idle VM beside
//!   thinvm's. Each round's VMs end with SIGTERM once measured. The guests print their
//!   MemFree when ready, and the plain rounds read the memory at ready and after the idle time:
//!   free page reporting shows as the difference (none on 128 MiB guests with Linux 6.1: it
//!   reports only while a zone has 32 pieces of its reporting order, 2 MiB each, free above
//!   the low watermark, and `page_reporting.page_reporting_order=5` changed nothing either).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use testbed::{GuestSpec, OuterOptions, OuterSpec, Scenario, Testbed, TestbedConfig};

const MEM_MIB: u32 = 128;
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet thinvm.test=power-button";
/// Seconds the VMs idle before their memory is read (free page reporting reports after ~2 s).
const IDLE_SECS: u32 = 20;

/// Shell helpers shared by the scenarios: the time in centiseconds and the summed memory of
/// the processes whose command line matches a pattern.
const HELPERS: &str = r#"now_cs() { awk '{ printf "%d", $1 * 100 }' /proc/uptime; }
mem_of() { # KIND PID...
    kind=$1; shift
    rss=0; anon=0; shmem=0; n=0
    for p in "$@"; do
        s=/proc/$p/status
        [ -r $s ] || continue
        rss=$((rss + $(awk '/^VmRSS/ { print $2 }' $s)))
        anon=$((anon + $(awk '/^RssAnon/ { print $2 }' $s)))
        shmem=$((shmem + $(awk '/^RssShmem/ { print $2 }' $s)))
        n=$((n + 1))
    done
    echo "@@MEM kind=$kind procs=$n rss_kb=$rss anon_kb=$anon shmem_kb=$shmem@@"
}
wait_ready() { # files...
    t=0
    while :; do
        r=0
        for f in "$@"; do grep -q POWER-BUTTON-READY "$f" 2>/dev/null && r=$((r + 1)); done
        [ $r -eq $# ] && return 0
        t=$((t + 1))
        [ $((t % 50)) -eq 0 ] && echo "ready: $r of $# after $((t / 5)) s"
        if [ $t -gt 3000 ]; then
            echo "only $r of $# guests ready"; free -m; top -bn1 | head -20
            return 1
        fi
        sleep 0.2
    done
}
"#;

fn daemon_script(n: u32) -> String {
    format!(
        r#"{HELPERS}
d=/tmp/density; mkdir -p $d/state
"$THINVM" daemon --socket $d/d.sock --state-dir $d/state --allow-dir /guest --group root \
    --stop-timeout 120 >$d/daemon.log 2>&1 &
dpid=$!
export THINVM_SOCKET=$d/d.sock
i=0; until [ -S $d/d.sock ]; do i=$((i+1)); [ $i -gt 150 ] && break; sleep 0.2; done
for i in $(seq 1 {n}); do
    "$THINVM" vm create vm$i --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" \
        --memory {MEM_MIB}M --cmdline '{CMDLINE}' >/dev/null || {{ cat $d/daemon.log; exit 10; }}
done
echo "CREATED {n}"
t0=$(now_cs)
pids=""
for i in $(seq 1 {n}); do "$THINVM" vm start vm$i >/dev/null & pids="$pids $!"; done
wait $pids
echo "STARTED {n}"
logs=""
for i in $(seq 1 {n}); do logs="$logs $d/state/vms/vm$i/console.log"; done
wait_ready $logs || {{ rc=1; tail -20 $d/daemon.log; }}
t1=$(now_cs)
echo "@@START kind=thinvmd n={n} cs=$((t1 - t0))@@"
"$THINVM" vm list
sleep {IDLE_SECS}
mem_of thinvmd $("$THINVM" vm list | awk 'NR > 1 && $5 ~ /^[0-9]+$/ {{ print $5 }}')
"$THINVM" bench-api --socket $d/d.sock --requests 400
pids=""
for i in $(seq 1 {n}); do "$THINVM" vm stop vm$i --timeout 120 >/dev/null & pids="$pids $!"; done
wait $pids
"$THINVM" vm list
kill $dpid; wait $dpid 2>/dev/null
exit ${{rc:-0}}
"#
    )
}

/// `n` plain VMM processes of one kind, measured once idle, then ended with SIGTERM.
fn plain_script(kind: &str, n: u32) -> String {
    let start = match kind {
        "thinvm-balloon" => format!(
            "\"$THINVM\" run --testbed never --kernel \"$GUEST_BZIMAGE\" --initrd \
             \"$GUEST_INITRD\" --memory {MEM_MIB}M --balloon --cmdline '{CMDLINE}'"
        ),
        _ => format!(
            "\"$QEMU\" -enable-kvm -M pc -nodefaults -cpu host -m {MEM_MIB} -smp 1 \
                 -object memory-backend-memfd,id=ram,size={MEM_MIB}M -machine memory-backend=ram \
                 -display none -serial stdio -no-reboot -kernel \"$GUEST_BZIMAGE\" \
                 -initrd \"$GUEST_INITRD\" -append '{CMDLINE}'"
        ),
    };
    format!(
        r#"{HELPERS}
d=/tmp/{kind}; mkdir -p $d
t0=$(now_cs)
pids=""
for i in $(seq 1 {n}); do {start} </dev/null >$d/$i.log 2>&1 & pids="$pids $!"; done
logs=""
for i in $(seq 1 {n}); do logs="$logs $d/$i.log"; done
wait_ready $logs || rc=1
t1=$(now_cs)
echo "@@START kind={kind} n={n} cs=$((t1 - t0))@@"
grep -h POWER-BUTTON-READY $logs | head -3
mem_of {kind}-at-ready $pids
sleep {IDLE_SECS}
mem_of {kind} $pids
kill -TERM $pids
wait $pids
exit ${{rc:-0}}
"#
    )
}

/// A `@@KIND k=v ...@@` line as a map (with "tag" = KIND).
fn parse_line(line: &str) -> Option<BTreeMap<String, String>> {
    let (_, rest) = line.split_once("@@")?;
    let body = rest.trim_end().strip_suffix("@@")?;
    let mut words = body.split_whitespace();
    let tag = words.next()?;
    if !matches!(tag, "START" | "MEM" | "API") {
        return None;
    }
    let mut m: BTreeMap<String, String> = words
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.insert("tag".into(), tag.into());
    Some(m)
}

/// Runs the density benchmark with `n` VMs per kind; true if every figure was measured.
pub fn density(n: u32, thinvm: Option<PathBuf>, echo: bool) -> Result<bool> {
    let thinvm = crate::thinvm_binary(thinvm)?;
    let guest = GuestSpec {
        modules: [
            "button",
            "evdev",
            "virtio",
            "virtio_ring",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio_pci",
            "virtio_balloon",
        ]
        .map(String::from)
        .into(),
        ..GuestSpec::default()
    };
    let config = TestbedConfig {
        guest,
        outer: OuterSpec {
            with_qemu: true,
            thinvm: Some(thinvm),
            ..OuterSpec::default()
        },
        ..TestbedConfig::default()
    };
    let tb = Testbed::new(&config)?;
    let per_vm = Duration::from_secs(60 * u64::from(n));
    let scenarios = [
        Scenario {
            name: "density-thinvmd".into(),
            script: daemon_script(n),
            timeout: Duration::from_secs(300) + per_vm,
        },
        Scenario {
            name: "density-thinvm-balloon".into(),
            script: plain_script("thinvm-balloon", n),
            timeout: Duration::from_secs(300) + per_vm,
        },
        Scenario {
            name: "density-qemu".into(),
            script: plain_script("qemu", n),
            timeout: Duration::from_secs(300) + per_vm,
        },
    ];
    let opts = OuterOptions {
        mem_mib: 1024 + n * (MEM_MIB + 64),
        echo,
        ..OuterOptions::default()
    };
    let results = tb.run(&opts, &scenarios)?;
    let mut figures: Vec<BTreeMap<String, String>> = Vec::new();
    for r in &results {
        println!("{:<24} {:?}", r.name, r.status);
        figures.extend(r.log.lines().filter_map(parse_line));
    }
    if let Some(r) = results.first() {
        println!("console log: {}", r.console_log.display());
    }
    Ok(report(n, &figures))
}

fn report(n: u32, figures: &[BTreeMap<String, String>]) -> bool {
    let get = |tag: &str, kind: Option<&str>, key: &str| -> Option<f64> {
        figures
            .iter()
            .find(|m| {
                m.get("tag").map(String::as_str) == Some(tag)
                    && kind.is_none_or(|k| m.get("kind").map(String::as_str) == Some(k))
            })?
            .get(key)?
            .parse()
            .ok()
    };
    println!("\n{n} VMs of {MEM_MIB} MiB, 1 vCPU each, idle {IDLE_SECS} s before memory is read");
    let mut complete = true;
    for kind in ["thinvmd", "thinvm-balloon", "qemu"] {
        let secs = get("START", Some(kind), "cs").map(|c| c / 100.0);
        let rss = get("MEM", Some(kind), "rss_kb").map(|k| k / 1024.0 / f64::from(n));
        let anon = get("MEM", Some(kind), "anon_kb").map(|k| k / 1024.0 / f64::from(n));
        match (secs, rss, anon) {
            (Some(s), Some(r), Some(a)) => println!(
                "  {kind:<15} all ready in {s:>6.1} s ({:.2} VMs/s)  per VM: RSS {r:>6.1} MiB \
                 (VMM heap {a:.1} MiB)",
                f64::from(n) / s.max(0.01)
            ),
            _ => {
                complete = false;
                println!("  {kind:<15} no figures")
            }
        }
    }
    let rss = |k| get("MEM", Some(k), "rss_kb");
    for (a, b) in [("thinvmd", "qemu"), ("thinvm-balloon", "qemu")] {
        if let (Some(x), Some(y)) = (rss(a), rss(b)) {
            println!("  memory per VM {a}/{b}: {:.2}x", x / y);
        }
    }
    match (get("API", None, "p50_us"), get("API", None, "p99_us")) {
        (Some(p50), Some(p99)) => println!(
            "  daemon API with {n} VMs running: p50 {:.2} ms, p99 {:.2} ms",
            p50 / 1000.0,
            p99 / 1000.0
        ),
        _ => {
            complete = false;
            println!("  daemon API: no figures");
        }
    }
    complete
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_lines_parse() {
        let m =
            parse_line("x@@MEM kind=qemu procs=4 rss_kb=100 anon_kb=5 shmem_kb=90@@\r").unwrap();
        assert_eq!(m["tag"], "MEM");
        assert_eq!(m["kind"], "qemu");
        assert_eq!(m["rss_kb"], "100");
        assert_eq!(parse_line("@@THINVM-BEGIN x@@"), None);
        assert_eq!(parse_line("@@API p50_us=1"), None);
        let figs = vec![
            parse_line("@@START kind=thinvmd n=2 cs=400@@").unwrap(),
            parse_line("@@MEM kind=thinvmd procs=2 rss_kb=4096 anon_kb=2048 shmem_kb=1@@").unwrap(),
            parse_line("@@API requests=4 p50_us=900 p99_us=2000@@").unwrap(),
        ];
        // qemu and the balloon run are missing: incomplete.
        assert!(!report(2, &figs));
    }

    #[test]
    fn scripts_measure_their_own_processes() {
        let d = daemon_script(3);
        assert!(
            d.contains("seq 1 3") && d.contains("mem_of thinvmd $("),
            "{d}"
        );
        assert!(d.contains("{ print $5 }"), "{d}");
        assert!(d.contains("bench-api"), "{d}");
        // A bare `wait` would also wait for the daemon, which runs until the end.
        assert!(!d.contains("\nwait\n"), "{d}");
        let b = plain_script("thinvm-balloon", 3);
        assert!(
            b.contains("--balloon") && b.contains("kill -TERM $pids"),
            "{b}"
        );
        let q = plain_script("qemu", 3);
        assert!(
            q.contains("memory-backend-memfd") && q.contains("mem_of qemu $pids"),
            "{q}"
        );
        // The outer machine's busybox has no pgrep or pkill.
        for s in [&d, &b, &q] {
            assert!(!s.contains("pgrep") && !s.contains("pkill"), "{s}");
        }
    }
}
