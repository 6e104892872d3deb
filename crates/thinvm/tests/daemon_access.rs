//! Who may use thinvmd's socket: the peer's credentials (SO_PEERCRED) are checked, with the
//! connecting process's supplementary groups. The socket is made world-writable here so that
//! the daemon's own check, not the file mode, is what refuses. Needs root (to switch users);
//! no KVM.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const THINVM: &str = env!("CARGO_BIN_EXE_thinvm");
const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
/// Debian's `daemon` group: the group the daemon allows in this test.
const ALLOWED: u32 = 1;

/// Runs `thinvm vm list` as nobody with a primary group and supplementary groups.
fn list_as(
    bin: &std::path::Path,
    socket: &std::path::Path,
    gid: u32,
    groups: &'static [u32],
) -> std::process::Output {
    let mut cmd = Command::new(bin);
    cmd.args(["vm", "list", "--socket"])
        .arg(socket)
        .stdin(Stdio::null());
    // SAFETY: runs in the child before exec; setgroups, setgid and setuid are
    // async-signal-safe and `groups` is a static slice. (std's own uid/gid switch would run
    // before this closure, when setgroups is no longer allowed.)
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

/// Ends the daemon even when the test fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn only_root_and_the_group_are_served() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let dir = std::env::temp_dir().join(format!("thinvm-access-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.join("d.sock");
    // A copy nobody can run, wherever the build folder is.
    let bin = dir.join("thinvm");
    std::fs::copy(THINVM, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Command::new(THINVM)
        .args(["daemon", "--group", "daemon", "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = KillOnDrop(daemon);
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "thinvmd did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(
        std::os::unix::fs::MetadataExt::gid(&meta),
        ALLOWED,
        "socket group"
    );
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    let refused = list_as(&bin, &socket, NOGROUP, &[]);
    let allowed_supp = list_as(&bin, &socket, NOGROUP, &[ALLOWED]);
    let allowed_primary = list_as(&bin, &socket, ALLOWED, &[]);
    let root = Command::new(THINVM)
        .args(["vm", "list", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    let _ = std::fs::remove_dir_all(&dir);

    assert!(
        !refused.status.success(),
        "nobody without the group must be refused"
    );
    for (what, out) in [
        ("supplementary group", &allowed_supp),
        ("primary group", &allowed_primary),
        ("root", &root),
    ] {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("NAME"),
            "{what}"
        );
    }
}
