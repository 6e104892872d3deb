//! `cargo xtask testbed-selftest`: proves the testbed's own machinery in real outer boots:
//! statuses (pass, failure code, timeout), a testbed fault (the outer machine powered off in
//! the middle of a batch) retried once and recovered, the scratch disk, and the exit code of an
//! interactive run through isa-debug-exit.

use std::time::Duration;

use anyhow::{Context, Result};
use testbed::{OuterOptions, OuterSpec, Scenario, Status, Testbed, TestbedConfig};

fn scenario(name: &str, script: &str, secs: u64) -> Scenario {
    Scenario {
        name: name.into(),
        script: script.into(),
        timeout: Duration::from_secs(secs),
    }
}

/// The first boot writes 'F' to the scratch disk and powers the outer machine off at once; the
/// retry boot finds the 'F' and passes.
const FAULT_ONCE: &str = r#"
if [ "$(dd if="$SCRATCH_DISK" bs=1 count=1 2>/dev/null)" = F ]; then echo recovered; exit 0; fi
printf F | dd of="$SCRATCH_DISK" bs=1 count=1 conv=notrunc,fsync 2>/dev/null
echo 1 > /proc/sys/kernel/sysrq
echo o > /proc/sysrq-trigger
sleep 30
"#;

/// Runs the self-test; true if every check passed.
pub fn run(echo: bool) -> Result<bool> {
    let mut outer = OuterSpec::default();
    outer
        .modules
        .extend(["virtio_pci", "virtio_blk"].map(String::from));
    let config = TestbedConfig {
        outer,
        ..TestbedConfig::default()
    };
    let tb = Testbed::new(&config)?;
    let scratch = tb.assets().cache_dir.join("selftest-scratch.img");
    std::fs::write(&scratch, vec![0u8; 1 << 20]).with_context(|| scratch.display().to_string())?;
    let opts = OuterOptions {
        echo,
        scratch_disk: Some(scratch.clone()),
        ..OuterOptions::default()
    };
    let scenarios = [
        scenario("pass", "echo hello-from-outer; [ -c /dev/kvm ]", 30),
        scenario("fail", "echo failing; exit 7", 30),
        scenario("timeout", "echo started; sleep 300; echo not-reached", 3),
        scenario("fault-once", FAULT_ONCE, 60),
        scenario("after-fault", "echo after", 30),
    ];
    let results = tb.run(&opts, &scenarios)?;
    let _ = std::fs::remove_file(&scratch);
    let mut ok = true;
    let mut expect = |name: &str, status: Status, retried: bool, text: &str| {
        let r = results.iter().find(|r| r.name == name);
        let good =
            r.is_some_and(|r| r.status == status && r.retried == retried && r.log.contains(text));
        println!(
            "{} {name}: expected {status:?} retried={retried} with {text:?}",
            if good { "PASS" } else { "FAIL" }
        );
        if let Some(r) = r.filter(|_| !good) {
            println!(
                "   got {:?} retried={} (console {})\n{}",
                r.status,
                r.retried,
                r.console_log.display(),
                r.log
            );
        }
        ok &= good;
    };
    expect("pass", Status::Passed, false, "hello-from-outer");
    expect("fail", Status::Failed(7), false, "failing");
    expect("timeout", Status::TimedOut, false, "started");
    expect("fault-once", Status::Passed, true, "recovered");
    expect("after-fault", Status::Passed, true, "after");
    let opts = OuterOptions {
        echo,
        ..OuterOptions::default()
    };
    let rc = tb.run_interactive_script(&opts, "echo interactive-script; exit 3\n")?;
    let good = rc == 3;
    println!(
        "{} interactive exit code: {rc} (expected 3)",
        if good { "PASS" } else { "FAIL" }
    );
    ok &= good;
    println!("testbed-selftest: {}", if ok { "PASSED" } else { "FAILED" });
    Ok(ok)
}
