use super::*;

fn result(status: Status, log: &str) -> ScenarioResult {
    ScenarioResult {
        name: "x".into(),
        status,
        log: log.into(),
        console_log: PathBuf::new(),
        retried: false,
    }
}

#[test]
fn info_checks() {
    let c = Case {
        check_info: true,
        ..case("x", "info", 0)
    };
    let good = "UNAME=6.1.0-56-cloud-amd64\nNPROC=1\nMEMTOTAL_KB=480000\nVMM-RC=0\n";
    assert!(check(&c, &result(Status::Passed, good), "6.1.0-56-cloud-amd64").is_empty());
    let errs = check(&c, &result(Status::Passed, good), "6.1.0-57-cloud-amd64");
    assert_eq!(errs.len(), 1, "{errs:?}");
    let low = "UNAME=r\nNPROC=2\nMEMTOTAL_KB=222620\n";
    assert_eq!(check(&c, &result(Status::Failed(5), low), "r").len(), 3);
    assert_eq!(check(&c, &result(Status::TimedOut, ""), "r").len(), 4);
}

#[test]
fn rc_and_stderr_checks() {
    let c = Case {
        stderr_has: Some("sysrq triggered crash"),
        ..case("p", "panic", 4)
    };
    let log =
        "STDERR: thinvm: guest kernel panic: Kernel panic - not syncing: sysrq triggered crash\n";
    assert!(check(&c, &result(Status::Failed(4), log), "r").is_empty());
    assert_eq!(
        check(&c, &result(Status::Failed(4), "STDERR: guest panic\n"), "r").len(),
        1
    );
    assert_eq!(check(&c, &result(Status::Passed, log), "r").len(), 1);
}

#[test]
fn daemon_checks_every_vm() {
    let c = Case {
        daemon: true,
        vms: 2,
        ..case("d", "power-button", 0)
    };
    let vm = |n: &str, exit: &str| {
        format!("SHOW-{n}:   \"last_exit\": \"{exit}\",\nGUEST-{n}: POWER-BUTTON-PRESSED\n")
    };
    // The state is the last field of each object in `vm list --json` (no comma).
    let list = "LIST:     \"state\": \"running\"\n".repeat(2);
    let good = format!(
        "{list}{}{}",
        vm("vm1", "guest powered off"),
        vm("vm2", "guest powered off")
    );
    assert!(check(&c, &result(Status::Passed, &good), "r").is_empty());
    let hard = format!(
        "{list}{}{}",
        vm("vm1", "guest powered off"),
        vm("vm2", "stopped: hard stop")
    );
    assert_eq!(check(&c, &result(Status::Passed, &hard), "r").len(), 1);
    let one = format!(
        "LIST:     \"state\": \"running\",\n{}",
        vm("vm1", "guest powered off")
    );
    assert_eq!(check(&c, &result(Status::Passed, &one), "r").len(), 3);
    let s = script(&c);
    assert!(s.contains("names='vm1 vm2'"), "{s}");
}

#[test]
fn scripts_use_the_case() {
    let c = Case {
        kernel: Kernel::Vmlinux,
        cpus: 2,
        ..case("v", "reboot", 3)
    };
    let s = script(&c);
    assert!(s.contains("--kernel \"$GUEST_VMLINUX\""), "{s}");
    assert!(s.contains("--cpus 2 --memory 512M"), "{s}");
    assert!(s.contains("thinvm.test=reboot"), "{s}");
    assert!(cases()
        .iter()
        .all(|c| testbed::images::check_name(c.name).is_ok()));
}

#[test]
fn fault_steps_are_checked() {
    let c = Case {
        daemon: true,
        vms: 2,
        faults: true,
        ..case("d", "power-button", 0)
    };
    let good = "KILL-VMM vm1 pid 100\nRESTARTED: running 300 1 ready=2\n\
                PIDS-BEFORE: vm1=300 vm2=200 \nPIDS-AFTER: vm1=300 vm2=200 \nADOPT-LINES: 2\n";
    assert!(
        check_faults(&c, good).is_empty(),
        "{:?}",
        check_faults(&c, good)
    );
    // The same pid again (not restarted), the guest not booted again, a pid changed by the
    // new daemon (started twice), a VM gone, and no adoption in the log.
    for bad in [
        good.replace("running 300 1", "running 100 1"),
        good.replace("ready=2", "ready=1"),
        good.replace("RESTARTED: running 300 1", "RESTARTED: crashed - 1"),
        good.replace("PIDS-AFTER: vm1=300 vm2=200", "PIDS-AFTER: vm1=300 vm2=201"),
        good.replace("PIDS-AFTER: vm1=300 vm2=200", "PIDS-AFTER: vm1=300 vm2=-"),
        good.replace("ADOPT-LINES: 2", "ADOPT-LINES: 0"),
        good.replace("PIDS-BEFORE: vm1=300 vm2=200", "PIDS-BEFORE: vm1=300"),
    ] {
        assert_eq!(check_faults(&c, &bad).len(), 1, "{bad}");
    }
    assert_eq!(check_faults(&c, "").len(), 3);
    let s = script(&c);
    assert!(
        s.contains("--restart on-failure") && s.contains("kill -9 $dpid"),
        "{s}"
    );
    let plain = script(&Case { faults: false, ..c });
    assert!(!plain.contains("kill -9"), "{plain}");
}
