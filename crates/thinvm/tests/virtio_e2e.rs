//! End to end in the nested testbed: Debian's kernel on thinvm with a virtio-blk ext4 disk, a
//! read-only disk and virtio-rng. The host makes the ext4 image (`mkfs.ext4 -d`), the guest
//! mounts it, writes files, syncs and powers off; the host then runs `e2fsck -fn` and reads the
//! guest's files with `debugfs`. Twice in one outer boot: on a raw image, and on a qcow2
//! overlay whose raw base must stay untouched (`qemu-img check` on the overlay too). Then a
//! guest boots its root file system from virtio-blk (`root=/dev/vda rw`): a busybox root in an
//! ext4 image made with `mkfs.ext4 -d`, whose own /sbin/init writes files, syncs, remounts the
//! root read-only and powers off; the host checks it with `e2fsck -fn` and `debugfs`. In the
//! first three scenarios the guest also unbinds and binds `virtio_blk` (reads of /dev/vda keep
//! their sha256) and `virtio_rng` (/dev/hwrng gives bytes again).
//!
//! Takes minutes (an emulated machine boots first): runs only with `THINVM_E2E=1`.

mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e_support::{enabled, guest_modules, value};
use testbed::{
    GuestSpec, OuterOptions, OuterSpec, Scenario, Script, Status, Testbed, TestbedConfig,
};

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

/// Layout of the scratch disk (the outer machine's /dev/vda), in MiB: the raw disk of the first
/// scenario, then the raw base and the qcow2 overlay of the second.
const RAW_AT: u64 = 0;
const BASE_AT: u64 = 64;
const OVERLAY_AT: u64 = 128;
const OVERLAY_SLOT: u64 = 32;
const SMP_AT: u64 = OVERLAY_AT + OVERLAY_SLOT;
const ROOT_AT: u64 = SMP_AT + 64;
const SCRATCH_MIB: u64 = ROOT_AT + 64;

/// The root file system's /sbin/init: only on the disk, so its markers prove the guest ran
/// from /dev/vda.
const ROOT_INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
echo ROOTFS-INIT
echo "ROOT-MOUNT=$(awk '$2 == "/" { r = $1 " " $3 } END { print r }' /proc/mounts)"
echo "ROOT-HELLO=$(cat /etc/hello)"
echo "written by the root file system" > /from-rootfs
dd if=/dev/urandom of=/blob bs=4096 count=256 2>/dev/null
echo "ROOT-BLOB-MD5=$(md5sum /blob | cut -d' ' -f1)"
sync
mount -o remount,ro / && echo ROOT-REMOUNT-RO=ok
poweroff -f
"#;

/// A busybox root file system image of 64 MiB with [`ROOT_INIT`] as /sbin/init.
fn make_root_image(dir: &Path) -> PathBuf {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let root = dir.join("rootfs");
    for d in ["bin", "sbin", "etc", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let applets = [
        "sh", "mount", "awk", "cat", "dd", "md5sum", "cut", "sync", "poweroff",
    ];
    for a in applets {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/hello"), "hello from the root image\n").unwrap();
    let init = root.join("sbin/init");
    std::fs::write(&init, ROOT_INIT).unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = dir.join("root.raw");
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&root)
            .arg(&img)
            .arg("64M"),
    );
    img
}

/// Boots the guest with its root file system on the raw disk at `ROOT_AT` MiB.
fn root_script() -> String {
    format!(
        r#"dd if="$SCRATCH_DISK" of=/tmp/root.raw bs=1M skip={ROOT_AT} count=64 2>/dev/null || exit 90
"$THINVM" run --testbed never --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" \
    --memory 256M --disk path=/tmp/root.raw \
    --cmdline 'console=ttyS0 reboot=k panic=-1 root=/dev/vda rw' </dev/null 2>/tmp/err
rc=$?
sed 's/^/STDERR: /' /tmp/err
echo "VMM-RC=$rc"
dd if=/tmp/root.raw of="$SCRATCH_DISK" bs=1M seek={ROOT_AT} conv=notrunc,fsync 2>/dev/null
sync
exit $rc
"#
    )
}

/// The thinvm command line inside the outer machine for a first disk `disk`.
fn thinvm_cmd(disk: &str, cpus: u32) -> String {
    format!(
        r#"dd if=/dev/zero of=/tmp/ro.raw bs=1M count=1 2>/dev/null
printf 'THINVM-RO-DISK' | dd of=/tmp/ro.raw conv=notrunc 2>/dev/null
"$THINVM" run --testbed never --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" \
    --cpus {cpus} --memory 256M --disk {disk},serial=thinvm-e2e-disk \
    --disk path=/tmp/ro.raw,readonly=on --rng \
    --cmdline 'console=ttyS0 reboot=k panic=-1 thinvm.test=virtio-blk' </dev/null 2>/tmp/err
rc=$?
sed 's/^/STDERR: /' /tmp/err
echo "VMM-RC=$rc"
"#
    )
}

/// Raw disk at `at` MiB of the scratch disk: copied to tmpfs, served, copied back.
fn raw_script(at: u64, cpus: u32) -> String {
    format!(
        "dd if=\"$SCRATCH_DISK\" of=/tmp/disk.raw bs=1M skip={at} count=64 2>/dev/null || exit 90\n\
         {}\
         dd if=/tmp/disk.raw of=\"$SCRATCH_DISK\" bs=1M seek={at} conv=notrunc,fsync 2>/dev/null\n\
         sync\nexit $rc\n",
        thinvm_cmd("path=/tmp/disk.raw,format=raw", cpus)
    )
}

/// qcow2 overlay on a raw base: only the overlay is copied back; the host checks the base
/// did not change.
fn qcow2_script() -> String {
    format!(
        "dd if=\"$SCRATCH_DISK\" of=/tmp/base.raw bs=1M skip={BASE_AT} count=64 2>/dev/null || exit 90\n\
         dd if=\"$SCRATCH_DISK\" of=/tmp/ov.qcow2 bs=1M skip={OVERLAY_AT} count={OVERLAY_SLOT} 2>/dev/null\n\
         {}\
         echo \"OVERLAY-MIB=$(( ($(wc -c < /tmp/ov.qcow2) + 1048575) / 1048576 ))\"\n\
         dd if=/tmp/ov.qcow2 of=\"$SCRATCH_DISK\" bs=1M seek={OVERLAY_AT} conv=notrunc,fsync 2>/dev/null\n\
         sync\nexit $rc\n",
        thinvm_cmd("path=/tmp/ov.qcow2,format=qcow2", 1)
    )
}

/// Writes `src` into `dst` at `mib` MiB.
fn put(dst: &Path, mib: u64, src: &Path) {
    use std::os::unix::fs::FileExt;
    let data = std::fs::read(src).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(dst).unwrap();
    f.write_all_at(&data, mib << 20).unwrap();
}

/// Reads `len` bytes at `mib` MiB of `src` into a new file `dst`.
fn take(src: &Path, mib: u64, len: u64, dst: &Path) {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len as usize];
    std::fs::File::open(src)
        .unwrap()
        .read_exact_at(&mut buf, mib << 20)
        .unwrap();
    std::fs::write(dst, buf).unwrap();
}

fn sha256(p: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(p))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Checks one scenario's guest output, then the ext4 image `img` as the host sees it.
fn check_guest_and_image(r: &testbed::ScenarioResult, img: &Path, dir: &Path) {
    let log = &r.log;
    let ctx = format!("{} (console {}):\n{log}", r.name, r.console_log.display());
    assert_eq!(r.status, Status::Passed, "{ctx}");
    assert_eq!(value(log, "VMM-RC"), Some("0"), "{ctx}");
    assert_eq!(value(log, "THINVM-TEST-RC"), Some("0"), "{ctx}");
    assert_eq!(value(log, "HELLO"), Some("hello from the host"), "{ctx}");
    assert_eq!(value(log, "RO-HEAD"), Some("THINVM-RO-DISK"), "{ctx}");
    assert_eq!(value(log, "RO-FLAG"), Some("1"), "{ctx}");
    assert_eq!(value(log, "RO-WRITE"), Some("refused"), "{ctx}");
    assert_eq!(value(log, "RNG-BYTES"), Some("16"), "{ctx}");
    assert_eq!(value(log, "SERIAL"), Some("thinvm-e2e-disk"), "{ctx}");
    // virtio_blk and virtio_rng unbound and bound again: both devices reset and served anew.
    assert_eq!(value(log, "REBIND-BLK-UNBOUND"), Some("yes"), "{ctx}");
    assert_eq!(value(log, "REBIND-BLK-READ"), Some("same"), "{ctx}");
    assert_eq!(value(log, "REBIND-RNG-BYTES"), Some("16"), "{ctx}");
    assert!(
        !log.contains("activation refused"),
        "the VMM refused an activation: {ctx}"
    );
    let cpus = value(log, "NPROC").expect("NPROC");
    assert_eq!(
        value(log, "RNG-IRQ-CPUS"),
        Some(cpus),
        "rng interrupts on every CPU: {ctx}"
    );
    let blob_md5 = value(log, "BLOB-MD5").expect("BLOB-MD5").to_string();
    run_ok(Command::new("e2fsck").arg("-fn").arg(img));
    let got = run_ok(
        Command::new("debugfs")
            .args(["-R", "cat /from-guest"])
            .arg(img),
    );
    assert_eq!(got, "written by the thinvm guest\n", "{ctx}");
    let blob = dir.join(format!("blob-{}", r.name));
    run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /blob {}", blob.display()))
            .arg(img),
    );
    let md5 = run_ok(Command::new("md5sum").arg(&blob));
    assert_eq!(
        md5.split_whitespace().next(),
        Some(blob_md5.as_str()),
        "{ctx}"
    );
}

/// The guest ran the disk's own /sbin/init from /dev/vda, and its writes are in the image.
fn check_root(r: &testbed::ScenarioResult, scratch: &Path, dir: &Path) {
    let log = &r.log;
    let ctx = format!("{} (console {}):\n{log}", r.name, r.console_log.display());
    assert_eq!(r.status, Status::Passed, "{ctx}");
    assert_eq!(value(log, "VMM-RC"), Some("0"), "{ctx}");
    assert!(log.contains("ROOTFS-INIT"), "{ctx}");
    assert_eq!(value(log, "ROOT-MOUNT"), Some("/dev/vda ext4"), "{ctx}");
    assert_eq!(
        value(log, "ROOT-HELLO"),
        Some("hello from the root image"),
        "{ctx}"
    );
    assert_eq!(value(log, "ROOT-REMOUNT-RO"), Some("ok"), "{ctx}");
    let img = dir.join("root-after.raw");
    take(scratch, ROOT_AT, 64 << 20, &img);
    run_ok(Command::new("e2fsck").arg("-fn").arg(&img));
    let got = run_ok(
        Command::new("debugfs")
            .args(["-R", "cat /from-rootfs"])
            .arg(&img),
    );
    assert_eq!(got, "written by the root file system\n", "{ctx}");
    let blob = dir.join("root-blob");
    run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /blob {}", blob.display()))
            .arg(&img),
    );
    let md5 = run_ok(Command::new("md5sum").arg(&blob));
    assert_eq!(
        md5.split_whitespace().next(),
        value(log, "ROOT-BLOB-MD5"),
        "{ctx}"
    );
}

#[test]
fn virtio_blk_raw_and_qcow2_roundtrip_in_the_testbed() {
    if !enabled() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("thinvm-virtio-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let img = make_image(&dir);
    // The qcow2 case: an overlay (backing file named relative to it) on a copy of the image.
    let base = dir.join("base.raw");
    std::fs::copy(&img, &base).unwrap();
    let overlay = dir.join("ov.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw"])
            .arg(&overlay),
    );
    let base_sha = sha256(&base);
    let scratch = dir.join("scratch.img");
    std::fs::File::create(&scratch)
        .unwrap()
        .set_len(SCRATCH_MIB << 20)
        .unwrap();
    put(&scratch, RAW_AT, &img);
    put(&scratch, SMP_AT, &img);
    put(&scratch, BASE_AT, &base);
    put(&scratch, OVERLAY_AT, &overlay);
    put(&scratch, ROOT_AT, &make_root_image(&dir));
    let mut tests = testbed::images::builtin_guest_tests();
    tests.push(Script::new(
        "virtio-blk",
        include_str!("../../testbed/guest/tests/virtio-blk.sh"),
    ));
    let mut outer_modules = OuterSpec::default().modules;
    outer_modules.extend(["virtio_pci", "virtio_blk"].map(String::from));
    let config = TestbedConfig {
        guest: GuestSpec {
            modules: guest_modules(&["virtio_blk", "virtio_rng"]),
            tests,
            ..GuestSpec::default()
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
        scratch_disk: Some(scratch.clone()),
        echo: std::env::var_os("THINVM_E2E_ECHO").is_some(),
        ..OuterOptions::default()
    };
    let scenarios = [
        Scenario {
            name: "virtio-blk-raw".into(),
            script: raw_script(RAW_AT, 1),
            timeout: Duration::from_secs(300),
        },
        Scenario {
            name: "virtio-blk-qcow2".into(),
            script: qcow2_script(),
            timeout: Duration::from_secs(300),
        },
        // Two vCPUs: the guest moves the virtio interrupts between them while writing, so
        // MSI-X vectors are masked and unmasked (pending bits) under I/O.
        Scenario {
            name: "virtio-blk-smp".into(),
            script: raw_script(SMP_AT, 2),
            timeout: Duration::from_secs(400),
        },
        Scenario {
            name: "virtio-blk-root".into(),
            script: root_script(),
            timeout: Duration::from_secs(300),
        },
    ];
    let results = tb.run(&opts, &scenarios).expect("outer run");
    // Raw: the guest's writes are in the image.
    let raw_img = dir.join("raw-after.raw");
    take(&scratch, RAW_AT, 64 << 20, &raw_img);
    check_guest_and_image(&results[0], &raw_img, &dir);
    // qcow2: the base is untouched, the overlay is consistent and holds the guest's writes.
    let q = &results[1];
    let ov_mib: u64 = value(&q.log, "OVERLAY-MIB")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no OVERLAY-MIB in {}:\n{}", q.name, q.log));
    assert!(ov_mib <= OVERLAY_SLOT, "overlay grew to {ov_mib} MiB");
    let base_after = dir.join("base-after.raw");
    take(&scratch, BASE_AT, 64 << 20, &base_after);
    assert_eq!(sha256(&base_after), base_sha, "the base image changed");
    take(&scratch, OVERLAY_AT, OVERLAY_SLOT << 20, &overlay);
    run_ok(
        Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&overlay),
    );
    let flat = dir.join("flat.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&overlay)
            .arg(&flat),
    );
    check_guest_and_image(q, &flat, &dir);
    let smp = &results[2];
    assert_eq!(value(&smp.log, "NPROC"), Some("2"), "{}", smp.log);
    let smp_img = dir.join("smp-after.raw");
    take(&scratch, SMP_AT, 64 << 20, &smp_img);
    check_guest_and_image(smp, &smp_img, &dir);
    check_root(&results[3], &scratch, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}
