//! `thinvm run` with bad input: each a clear one-line error on stderr and exit code 2, never a
//! panic or a hang. These run on any host with /dev/kvm (a PVM included: the inputs are checked
//! before the host's limits matter).

use std::process::{Command, Output, Stdio};

const THINVM: &str = env!("CARGO_BIN_EXE_thinvm");

fn run(args: &[&str]) -> Output {
    Command::new(THINVM)
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run thinvm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 2 and a one-line `thinvm: error:` message containing `needle`.
fn assert_refused(args: &[&str], needle: &str) {
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {err}");
    assert!(lines[0].starts_with("thinvm: error:"), "{args:?}: {err}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: {err} lacks {needle:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn scratch(name: &str, bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("thinvm-run-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[test]
fn missing_kernel_file() {
    assert_refused(
        &["--kernel", "/nonexistent/bzImage"],
        "cannot open /nonexistent/bzImage",
    );
}

#[test]
fn unreadable_initrd() {
    let k = scratch("k1", b"whatever");
    assert_refused(
        &["--kernel", &k, "--initrd", "/nonexistent/initrd"],
        "cannot open /nonexistent/initrd",
    );
}

#[test]
fn a_file_that_is_not_a_kernel() {
    let k = scratch("not-a-kernel", &[0x5a; 8192]);
    assert_refused(&["--kernel", &k], "cannot load the kernel");
    let empty = scratch("empty", b"");
    assert_refused(&["--kernel", &empty], "cannot load the kernel");
}

#[test]
fn zero_and_too_many_cpus() {
    let k = scratch("k2", b"x");
    assert_refused(
        &["--kernel", &k, "--cpus", "0"],
        "--cpus must be at least 1",
    );
    assert_refused(
        &["--kernel", &k, "--cpus", "100000"],
        "--cpus must be between 1 and",
    );
}

#[test]
fn memory_too_small_or_too_large() {
    let k = scratch("k3", b"x");
    assert_refused(&["--kernel", &k, "--memory", "1M"], "too small");
    assert_refused(
        &["--kernel", &k, "--memory", "1000000G"],
        "more than this host has",
    );
}

#[test]
fn malformed_sizes_are_usage_errors() {
    for bad in ["12Q", "M", "-1G", "99999999999999999999"] {
        let arg = format!("--memory={bad}");
        let o = run(&["--kernel", "/x", &arg]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("is not a size") || stderr(&o).contains("too large"));
    }
}

#[test]
fn initrd_without_kernel() {
    assert_refused(
        &["--initrd", "/x", "--testbed", "never"],
        "--initrd needs --kernel",
    );
}

#[test]
fn dev_kvm_not_permitted() {
    // As root, run thinvm as `nobody`, who may not open /dev/kvm (crw------- root).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP dev_kvm_not_permitted: needs root to switch to nobody");
        return;
    }
    let k = scratch("k-nobody", b"x");
    let dir = std::path::Path::new(&k).parent().unwrap().to_path_buf();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", THINVM])
        .args(["run", "--testbed", "never", "--kernel", &k])
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot open /dev/kvm"), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn bad_vsock_specs_are_usage_errors() {
    for (bad, needle) in [
        ("cid=2,socket=/tmp/x", "reserved"),
        ("socket=/tmp/x", "cid=N is missing"),
        ("cid=3", "socket=PATH is missing"),
        ("cid=three,socket=/tmp/x", "not a number"),
        ("cid=3,socket=/tmp/x,mode=1", "unknown vsock option"),
    ] {
        let arg = format!("--vsock={bad}");
        let o = run(&["--kernel", "/x", &arg]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{bad}: {}", stderr(&o));
    }
}

#[test]
fn bad_balloon_specs() {
    let k = scratch("k5", b"x");
    assert_refused(
        &["--kernel", &k, "--memory", "64M", "--balloon", "size=128M"],
        "larger than the guest's memory",
    );
    for (spec, needle) in [
        ("size=1M,colour=red", "unknown balloon option `colour`"),
        ("deflate_on_oom=maybe", "expected on or off"),
    ] {
        let arg = format!("--balloon={spec}");
        let o = run(&["--kernel", &k, &arg]);
        assert_eq!(o.status.code(), Some(2), "{spec}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{spec}: {}", stderr(&o));
    }
}
