//! `cargo xtask e2e`: thinvm end-to-end scenarios in the nested testbed. Each case boots the
//! guest with `thinvm run` inside the outer machine; the checks read the scenario's console
//! lines (`VMM-RC=`, `STDERR:` lines, and the guest's `info.sh` output).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use testbed::{OuterOptions, OuterSpec, Scenario, ScenarioResult, Status, Testbed, TestbedConfig};

/// Which kernel file a case boots.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    /// The bzImage (Linux boot protocol).
    BzImage,
    /// The ELF vmlinux (PVH entry).
    Vmlinux,
}

/// One end-to-end case.
#[derive(Debug)]
struct Case {
    name: &'static str,
    kernel: Kernel,
    cpus: u32,
    memory_mib: u64,
    /// Guest test script (`thinvm.test=`).
    test: &'static str,
    /// Expected `thinvm run` exit code.
    expect_rc: i32,
    /// `info.sh` output is checked against cpus/memory/release.
    check_info: bool,
    /// A word stderr must contain (case-insensitive).
    stderr_has: Option<&'static str>,
    /// vCPUs of the outer machine.
    outer_smp: u32,
    /// Drive the guest's interactive shell through thinvm's stdin (no guest test script).
    shell: bool,
    /// Run the guest under thinvmd in the outer machine and stop it with `thinvm vm stop`.
    daemon: bool,
    /// How many VMs of the case thinvmd runs at once (daemon cases).
    vms: u32,
    /// Daemon cases: once all are ready, SIGKILL vm1's VMM (restarted by `on-failure`, its
    /// guest boots again), then SIGKILL the daemon and start a new one, which must adopt every
    /// running VMM (same pids), before the clean stop.
    faults: bool,
    /// The scenario's time limit.
    timeout_s: u64,
}

const fn case(name: &'static str, test: &'static str, expect_rc: i32) -> Case {
    Case {
        name,
        kernel: Kernel::BzImage,
        cpus: 1,
        memory_mib: 512,
        test,
        expect_rc,
        check_info: false,
        stderr_has: None,
        outer_smp: 1,
        shell: false,
        daemon: false,
        vms: 1,
        faults: false,
        timeout_s: 180,
    }
}

/// The cases. Memory is 512 MiB so that MemTotal lands within 10 % (the kernel keeps ~40 MiB).
fn cases() -> Vec<Case> {
    vec![
        Case {
            check_info: true,
            ..case("bzimage-1cpu-info", "info", 0)
        },
        Case {
            kernel: Kernel::Vmlinux,
            check_info: true,
            ..case("pvh-vmlinux-info", "info", 0)
        },
        case("reboot", "reboot", 3),
        // The guest's panic reason must reach thinvm's stderr.
        Case {
            stderr_has: Some("sysrq triggered crash"),
            ..case("panic", "panic", 4)
        },
        case("acpi-poweroff", "acpi-poweroff", 0),
        // thinvmd's clean stop: the ACPI power button reaches the guest's button driver, the
        // guest powers itself off (not the hard stop after the timeout).
        Case {
            daemon: true,
            ..case("daemon-power-button-stop", "power-button", 0)
        },
        // Many VMs at once: thinvmd starts 10 together, each reaches its test's marker, `vm list`
        // shows them running; a VMM killed is restarted by its policy; the daemon killed and
        // restarted adopts them all; each stops by its own power-off on the button. 128 MiB each,
        // not the 64 MiB of the CI size: Debian's cloud kernel spans 16..62 MiB of guest memory
        // (vmlinux) and panics "System is deadlocked on memory" during its initcalls at 64 MiB
        // (seen in this testbed); a bzImage needs ~67 MiB for its decompression alone.
        Case {
            daemon: true,
            vms: 10,
            faults: true,
            kernel: Kernel::Vmlinux,
            memory_mib: 128,
            timeout_s: 900,
            ..case("daemon-many-vms", "power-button", 0)
        },
        // Commands typed into the guest's shell through thinvm's stdin (the serial input path).
        Case {
            shell: true,
            ..case("interactive-shell", "", 0)
        },
        Case {
            cpus: 2,
            outer_smp: 2,
            check_info: true,
            ..case("bzimage-2cpu-info", "info", 0)
        },
    ]
}

/// Types commands into the guest shell through a FIFO on thinvm's stdin, each after the output
/// that shows the guest is ready for it.
fn shell_script(c: &Case) -> String {
    format!(
        "[ -x \"$THINVM\" ] || {{ echo 'no thinvm binary in the outer machine'; exit 127; }}\n\
         d=/tmp/shell.$$; mkdir -p $d; mkfifo $d/in\n\
         \"$THINVM\" run --testbed never --kernel \"$GUEST_BZIMAGE\" --initrd \"$GUEST_INITRD\" \
         --cpus {} --memory {}M --cmdline 'console=ttyS0 reboot=k panic=-1 quiet' \
         <$d/in >$d/out 2>$d/err &\n\
         pid=$!\nexec 3>$d/in\n\
         waitfor() {{ i=0; until grep -q \"$1\" $d/out; do i=$((i+1)); \
         [ $i -gt 600 ] && {{ echo \"never saw $1\"; return 1; }}; sleep 0.2; done; }}\n\
         waitfor 'thinvm-guest#' && echo 'echo SHELL-$((6*7)); uname -r; nproc; echo END-$((50+50))' >&3\n\
         waitfor 'END-100' && sleep 1 && echo 'poweroff -f' >&3\n\
         wait $pid\nrc=$?\nexec 3>&-\n\
         sed 's/^/OUT: /' $d/out\nsed 's/^/STDERR: /' $d/err\necho \"VMM-RC=$rc\"\nexit $rc\n",
        c.cpus, c.memory_mib
    )
}

/// The fault steps of a daemon case (see [`Case::faults`]), in the outer shell: `pids` prints
/// `NAME=PID` of every VM; `PIDS-BEFORE`/`PIDS-AFTER` and `RESTARTED` are checked on the host.
const FAULTS: &str = r#"pids() { "$THINVM" vm list | awk 'NR > 1 { printf "%s=%s ", $1, $5 }'; }
row1() { "$THINVM" vm list | awk '$1 == "vm1" { print $2, $5, $6 }'; }
old=$("$THINVM" vm list | awk '$1 == "vm1" { print $5 }')
echo "KILL-VMM vm1 pid $old"; kill -9 "$old"
t0=$(date +%s); while :; do set -- $(row1)
    [ "$1" = running ] && [ "$2" != "$old" ] && [ "$3" = 1 ] && break
    [ $(($(date +%s) - t0)) -gt 120 ] && { echo "vm1 was not restarted: $*"; break; }; sleep 1; done
t0=$(date +%s); until [ "$(grep -c POWER-BUTTON-READY $d/state/vms/vm1/console.log)" -ge 2 ]; do
    [ $(($(date +%s) - t0)) -gt 180 ] && { echo "vm1's guest did not boot again"; break; }; sleep 1; done
echo "RESTARTED: $(row1) ready=$(grep -c POWER-BUTTON-READY $d/state/vms/vm1/console.log)"
echo "PIDS-BEFORE: $(pids)"
echo "KILL-DAEMON $dpid"; kill -9 $dpid; wait $dpid 2>/dev/null; rm -f $d/d.sock
start_daemon
sleep 2
echo "PIDS-AFTER: $(pids)"
grep -c adopting $d/daemon.log | sed 's/^/ADOPT-LINES: /'
"#;

/// The names of a daemon case's VMs.
fn vm_names(c: &Case) -> Vec<String> {
    (1..=c.vms).map(|i| format!("vm{i}")).collect()
}

/// Starts thinvmd in the outer machine, defines the case's VMs and starts them all at once,
/// waits until each guest's console log (under the state folder) shows it is ready, prints
/// `vm list --json`, stops them all with `thinvm vm stop` (the ACPI power button) and prints
/// each VM's record and console log.
fn daemon_script(c: &Case) -> String {
    let kernel = match c.kernel {
        Kernel::BzImage => "$GUEST_BZIMAGE",
        Kernel::Vmlinux => "$GUEST_VMLINUX",
    };
    format!(
        "[ -x \"$THINVM\" ] || {{ echo 'no thinvm binary in the outer machine'; exit 127; }}\n\
         d=/tmp/daemon.$$; mkdir -p $d/state; names='{names}'\n\
         start_daemon() {{ \"$THINVM\" --log-level info daemon --socket $d/d.sock --state-dir $d/state \
         --allow-dir /guest --group root --stop-timeout 60 >>$d/daemon.log 2>&1 & dpid=$!; \
         i=0; until [ -S $d/d.sock ]; do i=$((i+1)); [ $i -gt 150 ] && break; sleep 0.2; done; }}\n\
         export THINVM_SOCKET=$d/d.sock\nstart_daemon\n\
         for n in $names; do \"$THINVM\" vm create $n --kernel \"{kernel}\" --initrd \"$GUEST_INITRD\" \
         {restart}--cpus {cpus} --memory {mem}M --cmdline 'console=ttyS0 reboot=k panic=-1 quiet thinvm.test={test}' \
         >/dev/null || {{ cat $d/daemon.log; exit 10; }}; done\n\
         p=; for n in $names; do \"$THINVM\" vm start $n >/dev/null & p=\"$p $!\"; done\n\
         for x in $p; do wait $x || {{ echo \"a start failed\"; cat $d/daemon.log; exit 11; }}; done\n\
         echo \"STARTED-ALL\"\n\
         t0=$(date +%s); while :; do r=0; for n in $names; do grep -q POWER-BUTTON-READY \
         $d/state/vms/$n/console.log 2>/dev/null && r=$((r+1)); done; i=$(($(date +%s)-t0)); \
         [ $r -eq {count} ] && break; [ $i -gt {ready} ] && {{ echo \"only $r of {count} guests ready\"; \
         free -m; top -bn1 | head -15; tail -20 $d/daemon.log; break; }}; sleep 1; done\n\
         echo \"READY-AFTER-S=$i\"\n\
         \"$THINVM\" vm list --json | sed 's/^/LIST: /'\n\
         {faults}\
         p=; for n in $names; do \"$THINVM\" vm stop $n --timeout 60 >/dev/null & p=\"$p $!\"; done\n\
         rc=0; for x in $p; do wait $x || rc=$?; done\n\
         for n in $names; do \"$THINVM\" vm show $n --json | sed \"s/^/SHOW-$n: /\"; \
         \"$THINVM\" vm logs $n | sed \"s/^/GUEST-$n: /\"; done\n\
         kill $dpid; wait $dpid 2>/dev/null\necho \"VMM-RC=$rc\"\nexit $rc\n",
        names = vm_names(c).join(" "),
        restart = if c.faults { "--restart on-failure " } else { "" },
        faults = if c.faults { FAULTS } else { "" },
        cpus = c.cpus,
        mem = c.memory_mib,
        test = c.test,
        count = c.vms,
        ready = c.timeout_s - 90,
    )
}

fn script(c: &Case) -> String {
    if c.shell {
        return shell_script(c);
    }
    if c.daemon {
        return daemon_script(c);
    }
    let kernel = match c.kernel {
        Kernel::BzImage => "$GUEST_BZIMAGE",
        Kernel::Vmlinux => "$GUEST_VMLINUX",
    };
    format!(
        "[ -x \"$THINVM\" ] || {{ echo 'no thinvm binary in the outer machine'; exit 127; }}\n\
         \"$THINVM\" run --testbed never --kernel \"{kernel}\" --initrd \"$GUEST_INITRD\" \
         --cpus {} --memory {}M --cmdline 'console=ttyS0 reboot=k panic=-1 quiet thinvm.test={}' \
         </dev/null 2>/tmp/stderr.$$\nrc=$?\nsed 's/^/STDERR: /' /tmp/stderr.$$\necho \"VMM-RC=$rc\"\nexit $rc\n",
        c.cpus, c.memory_mib, c.test
    )
}

/// The value of the first `KEY=value` line in `log`.
fn value<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    log.lines()
        .find_map(|l| l.trim_end().strip_prefix(key)?.strip_prefix('='))
}

/// Everything wrong with a case's result (empty: passed).
fn check(c: &Case, r: &ScenarioResult, release: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let rc = match r.status {
        Status::Passed => Some(0),
        Status::Failed(n) => Some(n),
        Status::TimedOut | Status::NoResult => None,
    };
    if rc != Some(c.expect_rc) {
        errors.push(format!(
            "exit status {:?}, expected rc {}",
            r.status, c.expect_rc
        ));
    }
    if c.check_info {
        if value(&r.log, "UNAME") != Some(release) {
            errors.push(format!(
                "UNAME={:?}, expected {release}",
                value(&r.log, "UNAME")
            ));
        }
        if value(&r.log, "NPROC") != Some(c.cpus.to_string().as_str()) {
            errors.push(format!(
                "NPROC={:?}, expected {}",
                value(&r.log, "NPROC"),
                c.cpus
            ));
        }
        let want = c.memory_mib as f64 * 1024.0;
        match value(&r.log, "MEMTOTAL_KB").and_then(|v| v.parse::<f64>().ok()) {
            Some(kb) if (kb - want).abs() <= want * 0.10 => {}
            other => errors.push(format!(
                "MEMTOTAL_KB={other:?}, expected within 10% of {want}"
            )),
        }
    }
    if c.shell {
        let out: Vec<&str> = r
            .log
            .lines()
            .filter_map(|l| l.strip_prefix("OUT: "))
            .map(str::trim_end)
            .collect();
        for want in ["SHELL-42", release, "1"] {
            if !out.contains(&want) {
                errors.push(format!("the guest shell never printed a line {want:?}"));
            }
        }
    }
    if c.daemon {
        errors.extend(check_daemon(c, &r.log));
    }
    if let Some(word) = c.stderr_has {
        let stderr: Vec<&str> = r
            .log
            .lines()
            .filter_map(|l| l.strip_prefix("STDERR: "))
            .collect();
        if !stderr.iter().any(|l| l.to_lowercase().contains(word)) {
            errors.push(format!("stderr {stderr:?} does not mention {word:?}"));
        }
    }
    errors
}

/// A daemon case: every VM was listed running, saw the button and ended by its own power-off.
fn check_daemon(c: &Case, log: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let running = log
        .lines()
        .filter_map(|l| l.strip_prefix("LIST: "))
        .filter(|l| l.trim().trim_end_matches(',') == "\"state\": \"running\"")
        .count();
    if running != c.vms as usize {
        errors.push(format!(
            "`vm list --json` showed {running} running VMs, expected {}",
            c.vms
        ));
    }
    if c.faults {
        errors.extend(check_faults(c, log));
    }
    for n in vm_names(c) {
        let lines = |tag: &str| -> String {
            let prefix = format!("{tag}-{n}: ");
            log.lines()
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        };
        if !lines("GUEST").contains("POWER-BUTTON-PRESSED") {
            errors.push(format!("{n}: the guest never saw the power button"));
        }
        let show = lines("SHOW");
        if !show.contains("guest powered off") {
            errors.push(format!("{n}: did not end by its own power-off: {show}"));
        }
    }
    errors
}

/// The fault steps: vm1 came back (running, a new pid, one restart, its guest ready again) and
/// the new daemon listed every VM with the pid it had before the daemon was killed.
fn check_faults(c: &Case, log: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let line = |tag: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(tag))
            .map(str::trim)
            .unwrap_or_default()
    };
    let restarted: Vec<&str> = line("RESTARTED:").split_whitespace().collect();
    let killed = line("KILL-VMM vm1 pid");
    match restarted.as_slice() {
        ["running", pid, "1", ready] if *pid != killed && *ready == "ready=2" => {}
        other => errors.push(format!(
            "vm1 after its VMM (pid {killed}) was killed: {other:?}, expected running with a \
             new pid, 1 restart and its guest ready again"
        )),
    }
    let before = line("PIDS-BEFORE:");
    let after = line("PIDS-AFTER:");
    let count = before
        .split_whitespace()
        .filter(|p| !p.ends_with("=-"))
        .count();
    if before.is_empty() || before != after || count != c.vms as usize {
        errors.push(format!(
            "after the daemon's SIGKILL and restart the VMs were {after:?}, expected the same \
             {} running pids as before: {before:?}",
            c.vms
        ));
    }
    if line("ADOPT-LINES:").parse::<u32>().unwrap_or(0) < 1 {
        errors.push("the new daemon's log does not say it adopted the VMs".into());
    }
    errors
}

/// Runs the cases (one outer boot per outer -smp value); true if all passed.
pub fn run(thinvm: Option<PathBuf>, only: Option<&str>, echo: bool) -> Result<bool> {
    let thinvm = crate::thinvm_binary(thinvm)?;
    let config = TestbedConfig {
        outer: OuterSpec {
            thinvm: Some(thinvm),
            ..OuterSpec::default()
        },
        // pvpanic reports panics; button + evdev turn the ACPI power button into an input event.
        guest: testbed::GuestSpec {
            modules: ["pvpanic", "pvpanic_mmio", "button", "evdev"]
                .map(String::from)
                .into(),
            ..testbed::GuestSpec::default()
        },
        ..TestbedConfig::default()
    };
    let tb = Testbed::new(&config)?;
    let release = tb.assets().kernel_release.clone();
    let all: Vec<Case> = cases()
        .into_iter()
        .filter(|c| only.is_none_or(|o| c.name.contains(o)))
        .collect();
    let mut ok = true;
    for smp in [1, 2] {
        let batch: Vec<&Case> = all.iter().filter(|c| c.outer_smp == smp).collect();
        if batch.is_empty() {
            continue;
        }
        let scenarios: Vec<Scenario> = batch
            .iter()
            .map(|c| Scenario {
                name: c.name.into(),
                script: script(c),
                timeout: Duration::from_secs(c.timeout_s),
            })
            .collect();
        // Room for the largest case's guests (each VMM's own memory is a few MiB beside them).
        let guests_mib = batch
            .iter()
            .map(|c| u64::from(c.vms.max(1)) * c.memory_mib)
            .max()
            .unwrap_or(0);
        let opts = OuterOptions {
            smp,
            echo,
            mem_mib: OuterOptions::default()
                .mem_mib
                .max(u32::try_from(1024 + guests_mib * 3 / 2).unwrap_or(u32::MAX)),
            ..OuterOptions::default()
        };
        for (c, r) in batch.iter().zip(tb.run(&opts, &scenarios)?) {
            let errors = check(c, &r, &release);
            let verdict = if errors.is_empty() { "PASS" } else { "FAIL" };
            println!(
                "== {verdict} {} ({:?}; console {})",
                c.name,
                r.status,
                r.console_log.display()
            );
            for e in &errors {
                println!("   - {e}");
            }
            if !errors.is_empty() {
                print!(
                    "{}",
                    r.log
                        .lines()
                        .map(|l| format!("   | {l}\n"))
                        .collect::<String>()
                );
            }
            ok &= errors.is_empty();
        }
    }
    println!("e2e: {}", if ok { "PASSED" } else { "FAILED" });
    Ok(ok)
}

#[cfg(test)]
#[path = "e2e_tests.rs"]
mod tests;
