//! `cargo xtask testbed-smoke`: the outer machine boots, KVM works inside it, and the inner
//! QEMU boots the guest kernel with the guest initramfs to `info.sh`.

use std::time::Duration;

use anyhow::Result;
use testbed::{OuterOptions, OuterSpec, Scenario, Status, Testbed, TestbedConfig};

/// The inner QEMU command for the guest (pc machine, KVM), with `$1` as extra -append text.
pub const INNER_QEMU: &str = r#"inner_qemu() {
    "$QEMU" -enable-kvm -M pc -nodefaults -cpu host -m "${MEM:-256}" -smp "${CPUS:-1}" \
        -display none -serial stdio -no-reboot \
        -kernel "$GUEST_BZIMAGE" -initrd "$GUEST_INITRD" \
        -append "console=ttyS0 reboot=k panic=-1 quiet $1"
}
"#;

/// Runs the smoke test; true if it passed.
pub fn run(echo: bool) -> Result<bool> {
    let config = TestbedConfig {
        outer: OuterSpec {
            with_qemu: true,
            ..OuterSpec::default()
        },
        ..TestbedConfig::default()
    };
    let tb = Testbed::new(&config)?;
    let release = tb.assets().kernel_release.clone();
    let script = format!(
        "{INNER_QEMU}out=$(inner_qemu thinvm.test=info)\nrc=$?\necho \"$out\"\necho \"inner QEMU rc=$rc\"\n\
         echo \"$out\" | grep -q '^UNAME={release}' || exit 10\n\
         echo \"$out\" | grep -q '^NPROC=1' || exit 11\n\
         echo \"$out\" | grep -q '^MEMTOTAL_KB=[0-9]' || exit 12\nexit $rc\n"
    );
    let scenario = Scenario {
        name: "qemu-info".into(),
        script,
        timeout: Duration::from_secs(240),
    };
    let opts = OuterOptions {
        echo,
        ..OuterOptions::default()
    };
    let results = tb.run(&opts, &[scenario])?;
    let mut ok = true;
    for r in &results {
        println!(
            "== {} {:?} (console: {})",
            r.name,
            r.status,
            r.console_log.display()
        );
        print!("{}", r.log);
        ok &= r.status == Status::Passed;
        ok &= r
            .log
            .lines()
            .any(|l| l.trim_end() == format!("UNAME={release}"));
        ok &= r.log.lines().any(|l| l.trim_end() == "NPROC=1");
    }
    println!("testbed-smoke: {}", if ok { "PASSED" } else { "FAILED" });
    Ok(ok)
}
