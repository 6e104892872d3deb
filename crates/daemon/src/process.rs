//! VMM processes: started in their own session (so they outlive the daemon), known by pidfd plus
//! their /proc start time (so a recycled pid is never taken for them), reaped when they end.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Starting or adopting a process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot open the VMM's log {path}: {source}")]
    Log {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("cannot start the VMM {binary}: {source}")]
    Spawn {
        binary: std::path::PathBuf,
        source: io::Error,
    },
    #[error("pidfd_open({pid}): {source}")]
    Pidfd { pid: i32, source: io::Error },
    #[error("process {pid} ended before it could be watched")]
    Gone { pid: i32 },
}

/// A VMM process the daemon watches.
pub struct Proc {
    pub pid: i32,
    pub start_time: u64,
    pidfd: AsyncFd<OwnedFd>,
}

/// The start time of `pid` (field 22 of /proc/PID/stat, in clock ticks since boot).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields restart after the
    // last ')'. Field 3 is the first after it, so field 22 is the 20th.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, ProcessError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(ProcessError::Pidfd {
            pid,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Proc {
    /// Starts `binary args` in a new session, stdin from /dev/null, stdout and stderr appended
    /// to `log` (never a pipe: the VMM must not die with the daemon).
    /// The descriptors in `inherit` stay open in the VMM (same numbers).
    pub fn spawn(
        binary: &Path,
        args: &[String],
        log: &Path,
        inherit: &[RawFd],
    ) -> Result<Proc, ProcessError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| ProcessError::Log {
                path: log.to_path_buf(),
                source,
            })?;
        let err = out.try_clone().map_err(|source| ProcessError::Log {
            path: log.to_path_buf(),
            source,
        })?;
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let inherit = inherit.to_vec();
        // SAFETY: the closure runs in the child between fork and exec and only calls setsid and
        // fcntl (clearing close-on-exec on descriptors the parent keeps open until the spawn
        // returns), which are async-signal-safe; it does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
        let pid = child.id() as i32;
        // The Child is dropped without waiting: the watcher reaps it with waitpid.
        drop(child);
        let pidfd = pidfd_open(pid)?;
        let start_time = start_time(pid).unwrap_or(0);
        Self::from_parts(pid, start_time, pidfd)
    }

    /// Finds the VMM `pid` again if it still runs and started at `start_time`.
    pub fn adopt(pid: i32, start_time: u64) -> Option<Proc> {
        // Open first, check after: the pidfd pins this process, so a pid recycled after the
        // check cannot slip in.
        let pidfd = pidfd_open(pid).ok()?;
        if self::start_time(pid)? != start_time {
            return None;
        }
        Self::from_parts(pid, start_time, pidfd).ok()
    }

    fn from_parts(pid: i32, start_time: u64, fd: OwnedFd) -> Result<Proc, ProcessError> {
        // SAFETY: an OwnedFd stays open, and keeps returning the same fd, for as long as the
        // AsyncFd owns it.
        let pidfd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| {
                ProcessError::Pidfd {
                    pid,
                    source: e.into(),
                }
            })?;
        Ok(Proc {
            pid,
            start_time,
            pidfd,
        })
    }

    /// Waits until the process has ended, then reaps it if it is the daemon's child.
    pub async fn exited(&self) {
        loop {
            match self.pidfd.readable().await {
                Ok(mut guard) => {
                    guard.retain_ready();
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        self.reap();
    }

    /// Whether the process has ended (without waiting).
    pub fn has_exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1, no wait.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }

    fn reap(&self) {
        let mut status = 0;
        // SAFETY: waitpid with a pid and a status int we own; WNOHANG never blocks. ECHILD (an
        // adopted process is not our child) is fine.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        tracing::debug!(pid = self.pid, r, status, "reaped");
    }

    /// Sends `signal` through the pidfd (never to a recycled pid).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let fd = self.pidfd.get_ref().as_raw_fd();
        // SAFETY: pidfd_send_signal with our pidfd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Resident set size and CPU time (seconds) of `pid`, from /proc.
pub fn usage(pid: i32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((rss_kib.saturating_mul(1024), (utime + stime) as f64 / hz))
}

/// Opens a file to read if it exists.
pub fn read_if_exists(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let mut s = String::new();
    io::Read::read_to_string(&mut f, &mut s).ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawn_watch_signal_and_adopt() {
        let dir = std::env::temp_dir().join(format!("thinvmd-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("out.log");
        // A descriptor to inherit: the child sees it under the same number.
        let keep = std::fs::File::open("/dev/null").unwrap();
        let fd = keep.as_raw_fd();
        let p = Proc::spawn(
            Path::new("/bin/sh"),
            &["-c".into(), "echo hi; sleep 30".into()],
            &log,
            &[fd],
        )
        .unwrap();
        let target = std::fs::read_link(format!("/proc/{}/fd/{fd}", p.pid)).unwrap();
        assert_eq!(target, Path::new("/dev/null"));
        assert!(p.start_time > 0);
        // Its own session: the session id is its pid.
        // SAFETY: getsid has no memory arguments.
        assert_eq!(unsafe { libc::getsid(p.pid) }, p.pid);
        let again = Proc::adopt(p.pid, p.start_time).expect("adopt the live process");
        assert!(
            Proc::adopt(p.pid, p.start_time + 1).is_none(),
            "wrong start time"
        );
        assert!(!again.has_exited());
        let (rss, _) = usage(p.pid).unwrap();
        assert!(rss > 0);
        // The output reaches the log file, not the daemon.
        let t0 = std::time::Instant::now();
        while std::fs::read_to_string(&log).unwrap() != "hi\n" {
            assert!(t0.elapsed().as_secs() < 10, "no output in the log");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        p.signal(libc::SIGKILL).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), p.exited())
            .await
            .expect("the pidfd reports the end");
        assert!(again.has_exited());
        assert!(Proc::adopt(p.pid, p.start_time).is_none(), "reaped: gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn start_time_of_self_and_of_nobody() {
        assert!(start_time(std::process::id() as i32).is_some());
        assert!(start_time(-1).is_none());
    }
}
