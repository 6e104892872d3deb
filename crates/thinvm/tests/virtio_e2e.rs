//! End to end in the nested testbed: Debian's kernel on thinvm with a virtio-blk ext4 disk, a
//! read-only disk and virtio-rng. The host makes the ext4 image (`mkfs.ext4 -d`), the guest
//! mounts it, writes files, syncs and powers off; the host then runs `e2fsck -fn` and reads the
//! guest's file with `debugfs`.
//!
//! Takes minutes (an emulated machine boots first): runs only with `THINVM_E2E=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testbed::{
    GuestSpec, OuterOptions, OuterSpec, Scenario, Script, Status, Testbed, TestbedConfig,
};

const GUEST_MODULES: [&str; 7] = [
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_rng",
];

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn make_image(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello"), "hello from the host\n").unwrap();
    let img = dir.join("disk.raw");
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&root)
            .arg(&img)
            .arg("64M"),
    );
    img
}

/// The outer script: the scratch disk (our image) is copied to tmpfs, served to the guest,
/// and copied back, so the host sees what the guest wrote.
const OUTER_SCRIPT: &str = r#"
dd if="$SCRATCH_DISK" of=/tmp/disk.raw bs=1M 2>/dev/null || { echo "no scratch disk"; exit 90; }
dd if=/dev/zero of=/tmp/ro.raw bs=1M count=1 2>/dev/null
printf 'THINVM-RO-DISK' | dd of=/tmp/ro.raw conv=notrunc 2>/dev/null
"$THINVM" run --testbed never --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" \
    --memory 256M --disk path=/tmp/disk.raw,format=raw \
    --disk path=/tmp/ro.raw,readonly=on --rng \
    --cmdline 'console=ttyS0 reboot=k panic=-1 thinvm.test=virtio-blk' </dev/null 2>/tmp/err
rc=$?
sed 's/^/STDERR: /' /tmp/err
echo "VMM-RC=$rc"
dd if=/tmp/disk.raw of="$SCRATCH_DISK" bs=1M conv=fsync 2>/dev/null
sync
exit $rc
"#;

fn value<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    log.lines()
        .find_map(|l| l.trim_end().strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn virtio_blk_ext4_roundtrip_in_the_testbed() {
    if std::env::var_os("THINVM_E2E").is_none() {
        eprintln!("skipped: set THINVM_E2E=1 to boot the nested testbed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("thinvm-virtio-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let img = make_image(&dir);
    let mut tests = testbed::images::builtin_guest_tests();
    tests.push(Script::new(
        "virtio-blk",
        include_str!("../../testbed/guest/tests/virtio-blk.sh"),
    ));
    let mut outer_modules = OuterSpec::default().modules;
    outer_modules.extend(["virtio_pci", "virtio_blk"].map(String::from));
    let config = TestbedConfig {
        guest: GuestSpec {
            modules: GUEST_MODULES.map(String::from).into(),
            tests,
        },
        outer: OuterSpec {
            modules: outer_modules,
            thinvm: Some(PathBuf::from(env!("CARGO_BIN_EXE_thinvm"))),
            ..OuterSpec::default()
        },
        ..TestbedConfig::default()
    };
    let tb = Testbed::new(&config).expect("testbed");
    let opts = OuterOptions {
        scratch_disk: Some(img.clone()),
        echo: std::env::var_os("THINVM_E2E_ECHO").is_some(),
        ..OuterOptions::default()
    };
    let scenario = Scenario {
        name: "virtio-blk".into(),
        script: OUTER_SCRIPT.into(),
        timeout: Duration::from_secs(300),
    };
    let r = tb.run(&opts, &[scenario]).expect("outer run").remove(0);
    let log = &r.log;
    let ctx = format!("console {}:\n{log}", r.console_log.display());
    assert_eq!(r.status, Status::Passed, "{ctx}");
    assert_eq!(value(log, "VMM-RC"), Some("0"), "{ctx}");
    assert_eq!(value(log, "THINVM-TEST-RC"), Some("0"), "{ctx}");
    assert_eq!(value(log, "HELLO"), Some("hello from the host"), "{ctx}");
    assert_eq!(value(log, "RO-HEAD"), Some("THINVM-RO-DISK"), "{ctx}");
    assert_eq!(value(log, "RO-FLAG"), Some("1"), "{ctx}");
    assert_eq!(value(log, "RO-WRITE"), Some("refused"), "{ctx}");
    assert_eq!(value(log, "RNG-BYTES"), Some("16"), "{ctx}");
    let blob_md5 = value(log, "BLOB-MD5").expect("BLOB-MD5").to_string();
    // The host's view of the image the guest wrote.
    run_ok(Command::new("e2fsck").arg("-fn").arg(&img));
    let got = run_ok(
        Command::new("debugfs")
            .args(["-R", "cat /from-guest"])
            .arg(&img),
    );
    assert_eq!(got, "written by the thinvm guest\n");
    let blob = dir.join("blob");
    run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /blob {}", blob.display()))
            .arg(&img),
    );
    let md5 = run_ok(Command::new("md5sum").arg(&blob));
    assert_eq!(
        md5.split_whitespace().next(),
        Some(blob_md5.as_str()),
        "{ctx}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
