//! Running the outer QEMU: the command line, console capture to a log file, the overall timeout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of the outer machine.
#[derive(Debug, Clone)]
pub struct OuterOptions {
    /// vCPUs of the outer machine (`-smp`); 1 except for SMP cases.
    pub smp: u32,
    /// Memory of the outer machine in MiB.
    pub mem_mib: u32,
    /// A raw image attached as a virtio disk (the outer needs virtio_pci and virtio_blk in its
    /// module list); /init exports its device as `$SCRATCH_DISK`.
    pub scratch_disk: Option<PathBuf>,
    /// Time allowed for the outer machine's boot on top of the scenario timeouts.
    pub boot_allowance: Duration,
    /// Echo the console to stderr while it runs.
    pub echo: bool,
}

impl Default for OuterOptions {
    fn default() -> Self {
        Self {
            smp: 1,
            mem_mib: 2048,
            scratch_disk: None,
            boot_allowance: Duration::from_secs(180),
            echo: false,
        }
    }
}

/// Errors running the outer QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// QEMU could not be started or waited for.
    #[error("outer QEMU ({cmd}): {source}")]
    Spawn {
        /// The command.
        cmd: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The console log could not be written.
    #[error("console log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The outer QEMU command line (without the stdio handling).
pub fn outer_command(qemu: &Path, kernel: &Path, initrd: &Path, opts: &OuterOptions) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "tcg", "-cpu", "max", "-nodefaults", "-no-reboot"])
        .arg("-m")
        .arg(opts.mem_mib.to_string())
        .arg("-smp")
        .arg(opts.smp.max(1).to_string())
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        // A periodic tick: see crate::stall for the lost timer interrupt it recovers from.
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet nohz=off highres=off",
        ]);
    if let Some(disk) = &opts.scratch_disk {
        let mut spec = std::ffi::OsString::from("file=");
        spec.push(disk);
        spec.push(",format=raw,if=virtio,cache=unsafe");
        cmd.arg("-drive").arg(spec);
    }
    cmd
}

/// How a captured run ended.
#[derive(Debug)]
pub struct Captured {
    /// The whole console output (lossy UTF-8).
    pub console: String,
    /// QEMU's exit code (None if killed by a signal or by us).
    pub exit_code: Option<i32>,
    /// True if the overall timeout killed QEMU.
    pub killed: bool,
    /// True if QEMU was ended because the machine stalled (no CPU time, an NMI did not help).
    pub stalled: bool,
    /// Stalls that an NMI ended.
    pub revived: u32,
}

/// Runs `cmd` with the serial console on a pipe, copying it to `log` (and stderr if `echo`),
/// killing it after `timeout`.
pub fn run_captured(
    mut cmd: Command,
    log: &Path,
    timeout: Duration,
    echo: bool,
) -> Result<Captured, QemuError> {
    // The monitor lets the stall watchdog look into (and kick) a halted outer machine.
    let monitor = crate::stall::Monitor::new(&log.with_extension("monitor.sock"));
    cmd.args(["-display", "none", "-serial", "stdio", "-monitor"])
        .arg(monitor.qemu_arg())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = format!("{cmd:?}");
    let spawn_err = |source| QemuError::Spawn {
        cmd: line.clone(),
        source,
    };
    let log_err = |source| QemuError::Log {
        path: log.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::create(log).map_err(log_err)?;
    writeln!(file, "# {line}").map_err(log_err)?;
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let reader = spawn_copier(&mut child, file, echo);
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    let mut stalled = false;
    let mut watch = crate::stall::Watch::new(Instant::now());
    let status = loop {
        if let Some(status) = child.try_wait().map_err(spawn_err)? {
            break status;
        }
        if Instant::now() >= deadline {
            tracing::warn!("outer QEMU still running after {timeout:?}: killing it");
            let _ = child.kill();
            killed = true;
            break child.wait().map_err(spawn_err)?;
        }
        if let Some(ticks) = crate::stall::cpu_ticks(child.id()) {
            match watch.observe(ticks, Instant::now()) {
                crate::stall::Verdict::Alive => {}
                crate::stall::Verdict::Stalled => kick(&monitor, log),
                crate::stall::Verdict::Dead => {
                    tracing::warn!("outer machine stalled and an NMI did not revive it: ending it");
                    note(
                        log,
                        "outer machine stalled; the NMI did not revive it; ended",
                    );
                    let _ = child.kill();
                    killed = true;
                    stalled = true;
                    break child.wait().map_err(spawn_err)?;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let console = reader.join().unwrap_or_default();
    if watch.kicks > 0 && !stalled {
        tracing::warn!(
            "outer machine stalled and an NMI revived it {} time(s)",
            watch.kicks
        );
    }
    let _ = std::fs::remove_file(log.with_extension("monitor.sock"));
    Ok(Captured {
        console,
        exit_code: status.code(),
        killed,
        stalled,
        revived: if stalled { 0 } else { watch.kicks },
    })
}

/// A stalled outer machine: records the CPU and local APIC state in the log, then sends an NMI.
fn kick(monitor: &crate::stall::Monitor, log: &Path) {
    tracing::warn!(
        "outer QEMU used no CPU for {:?}: recording its state and sending an NMI",
        crate::stall::STALL_AFTER
    );
    let state = monitor
        .commands(&["info registers", "info lapic", "info pic", "nmi"])
        .unwrap_or_else(|e| format!("monitor: {e}"));
    note(log, &format!("outer machine stalled; monitor:\n{state}"));
}

/// Appends a testbed note to the console log (the copier thread appends to the same file).
fn note(log: &Path, text: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
        let _ = writeln!(f, "\n# testbed: {text}");
    }
}

/// Runs `cmd` with the serial console (and QEMU's monitor mux) on this terminal: stdin is
/// inherited, the output is passed through to stdout as it comes and copied to `log`. Returns
/// the code of the `@@THINVM-EXIT rc=N@@` marker, if one was seen, and QEMU's exit status.
pub fn run_passthrough(
    mut cmd: Command,
    log: &Path,
) -> Result<(Option<i32>, Option<i32>), QemuError> {
    cmd.args(["-display", "none", "-serial", "mon:stdio"])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let line = format!("{cmd:?}");
    let spawn_err = |source| QemuError::Spawn {
        cmd: line.clone(),
        source,
    };
    let log_err = |source| QemuError::Log {
        path: log.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::create(log).map_err(log_err)?;
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let mut exit_rc = None;
    if let Some(mut out) = child.stdout.take() {
        let mut term = std::io::stdout();
        let mut current = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                break;
            };
            let _ = term.write_all(chunk).and_then(|()| term.flush());
            file.write_all(chunk).map_err(log_err)?;
            for &b in chunk {
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&current);
                    exit_rc = crate::markers::parse_console(&text).exit_rc.or(exit_rc);
                    current.clear();
                } else if current.len() < 4096 {
                    current.push(b);
                }
            }
        }
    }
    let status = child.wait().map_err(spawn_err)?;
    Ok((exit_rc, status.code()))
}

/// Copies QEMU's stdout and stderr into the log; returns the stdout text when both close.
fn spawn_copier(
    child: &mut Child,
    file: std::fs::File,
    echo: bool,
) -> std::thread::JoinHandle<String> {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let file = std::sync::Arc::new(std::sync::Mutex::new(file));
    let err_file = file.clone();
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut text);
        }
        if let Ok(mut f) = err_file.lock() {
            let _ = write!(f, "{text}");
        }
        text
    });
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        if let Some(mut out) = stdout {
            while let Ok(n) = out.read(&mut buf) {
                let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                    break;
                };
                all.extend_from_slice(chunk);
                if let Ok(mut f) = file.lock() {
                    let _ = f.write_all(chunk);
                }
                if echo {
                    let _ = std::io::stderr().write_all(chunk);
                }
            }
        }
        let err_text = err_thread.join().unwrap_or_default();
        let mut text = String::from_utf8_lossy(&all).into_owned();
        if !err_text.is_empty() {
            text.push_str("\n# outer QEMU stderr:\n");
            text.push_str(&err_text);
        }
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_the_testbed_shape() {
        let opts = OuterOptions {
            smp: 2,
            mem_mib: 1024,
            scratch_disk: Some("/s.img".into()),
            ..Default::default()
        };
        let cmd = outer_command(Path::new("qemu"), Path::new("/k"), Path::new("/i"), &opts);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg -cpu max"), "{joined}");
        assert!(
            joined.contains("-m 1024 -smp 2 -kernel /k -initrd /i"),
            "{joined}"
        );
        assert!(joined.contains("-no-reboot"), "{joined}");
        assert!(
            joined.contains("file=/s.img,format=raw,if=virtio"),
            "{joined}"
        );
    }

    #[test]
    fn capture_and_timeout() {
        let dir = std::env::temp_dir().join(format!("testbed-qemu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        // `sh -c` ignores QEMU's display/serial arguments as positional parameters.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two >&2; exit 7"]);
        let c = run_captured(cmd, &log, Duration::from_secs(30), false).unwrap();
        assert_eq!(c.exit_code, Some(7));
        assert!(!c.killed);
        assert!(c.console.starts_with("one\n"), "{}", c.console);
        assert!(c.console.contains("two"), "{}", c.console);
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(
            logged.contains("one\n") && logged.contains("two"),
            "{logged}"
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let t = Instant::now();
        let c = run_captured(cmd, &log, Duration::from_millis(500), false).unwrap();
        assert!(c.killed && c.exit_code.is_none());
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(c.console.contains("started"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passthrough_finds_the_exit_marker() {
        let dir = std::env::temp_dir().join(format!("testbed-pass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo hi; printf '@@THINVM-EXIT rc=4@@\\r\\n'; echo bye",
        ]);
        assert_eq!(run_passthrough(cmd, &log).unwrap(), (Some(4), Some(0)));
        assert!(std::fs::read_to_string(&log).unwrap().contains("bye"));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo no marker; exit 1"]);
        assert_eq!(run_passthrough(cmd, &log).unwrap(), (None, Some(1)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
