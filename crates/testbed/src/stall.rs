//! Watching the outer QEMU for a stall: the emulated machine halted for good.
//!
//! QEMU 7.2's TCG with nested SVM has, when several nested guests boot at once, sometimes
//! left the outer machine halted with nothing to wake it: QEMU's vCPU thread waits on a futex,
//! the process uses no CPU at all, and the outer kernel's own watchdogs never fire (they need
//! the timer interrupt that never comes). A live outer machine always uses some CPU (its timer
//! ticks, the scenario's `sleep` loops, the nested guests' timers), so a process whose CPU time
//! does not move for [`STALL_AFTER`] has stalled. The watchdog then records what the monitor
//! shows (registers, local APIC) in the console log and sends an NMI (a halted CPU wakes on
//! it); if the machine stalls again soon after, the run is ended as a testbed fault, which
//! [`crate::Testbed::run`] retries once, instead of waiting out the scenarios' timeouts.
//!
//! What the monitor showed in the stalls seen so far: the CPU halted with interrupts enabled
//! and the local APIC timer's vector pending in IRR, never delivered (a lost wakeup in the
//! emulator). The outer kernel therefore runs with a periodic tick (`nohz=off highres=off`,
//! see [`crate::qemu::outer_command`]): the next period raises the interrupt again.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// CPU time standing still this long means the outer machine has stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(45);

/// The CPU time of process `pid`: the nanoseconds its threads ran (the first field of each
/// /proc/PID/task/TID/schedstat, exact even for short wakeups that tick accounting misses), or
/// user + system clock ticks from /proc/PID/stat where schedstat is missing.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns = 0u64;
    let mut any = false;
    for t in tasks.flatten() {
        let text = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        if let Some(v) = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            ns = ns.wrapping_add(v);
            any = true;
        }
    }
    if any {
        return Some(ns);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// utime + stime from a /proc/PID/stat line (fields 14 and 15; the command in field 2 may
/// hold spaces and parentheses, so fields are counted after its last `)`).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// What the watchdog decided on one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// CPU time moved recently (or the watch has just started).
    Alive,
    /// Stalled for [`STALL_AFTER`]: time to look and kick.
    Stalled,
    /// Stalled again within [`REVIVE_WINDOW`] of a kick: give up.
    Dead,
}

/// A second stall this soon after a kick means the kick did not help (an NMI wakes a halted
/// CPU for its handler, which then halts again if the lost interrupt stays lost).
pub const REVIVE_WINDOW: Duration = Duration::from_secs(180);

/// The stall state of one outer QEMU.
#[derive(Debug)]
pub struct Watch {
    last: Option<u64>,
    since: Instant,
    kicked_at: Option<Instant>,
    /// NMIs sent.
    pub kicks: u32,
}

impl Watch {
    /// A watch starting now.
    pub fn new(now: Instant) -> Self {
        Self {
            last: None,
            since: now,
            kicked_at: None,
            kicks: 0,
        }
    }

    /// Feeds one CPU time reading taken at `now`.
    pub fn observe(&mut self, ticks: u64, now: Instant) -> Verdict {
        if self.last != Some(ticks) {
            self.last = Some(ticks);
            self.since = now;
            return Verdict::Alive;
        }
        if now.duration_since(self.since) < STALL_AFTER {
            return Verdict::Alive;
        }
        match self.kicked_at {
            Some(at) if now.duration_since(at) < REVIVE_WINDOW => Verdict::Dead,
            _ => {
                self.kicked_at = Some(now);
                self.since = now;
                self.kicks += 1;
                Verdict::Stalled
            }
        }
    }
}

/// QEMU's human monitor on a Unix socket.
#[derive(Debug, Clone)]
pub struct Monitor {
    path: PathBuf,
}

impl Monitor {
    /// The monitor at `path` (QEMU's `-monitor unix:PATH,server=on,wait=off`).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    /// The `-monitor` argument for QEMU.
    pub fn qemu_arg(&self) -> String {
        format!("unix:{},server=on,wait=off", self.path.display())
    }

    /// Runs monitor commands one after another; returns what the monitor printed.
    pub fn commands(&self, cmds: &[&str]) -> std::io::Result<String> {
        let stream = UnixStream::connect(&self.path)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut writer = stream.try_clone()?;
        let mut reader = stream;
        let mut out = String::new();
        read_to_prompt(&mut reader, &mut out)?;
        for cmd in cmds {
            writer.write_all(format!("{cmd}\n").as_bytes())?;
            read_to_prompt(&mut reader, &mut out)?;
        }
        Ok(out)
    }
}

/// Reads until the `(qemu) ` prompt (or the read timeout), appending to `out`.
fn read_to_prompt(reader: &mut UnixStream, out: &mut String) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    let start = out.len();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(()),
            Err(e) => return Err(e),
        };
        out.push_str(&String::from_utf8_lossy(buf.get(..n).unwrap_or_default()));
        if out.get(start..).is_some_and(|s| s.ends_with("(qemu) ")) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    #[test]
    fn cpu_ticks_parse_after_the_command_name() {
        let stat = "42 (qemu (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 3 0 9";
        assert_eq!(parse_cpu_ticks(stat), Some(1290));
        assert_eq!(parse_cpu_ticks("42 (x) S 1"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let me = cpu_ticks(std::process::id());
        assert!(me.is_some());
    }

    #[test]
    fn a_still_cpu_time_stalls_and_a_second_stall_soon_after_is_death() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0);
        assert_eq!(w.observe(10, t0), Verdict::Alive);
        assert_eq!(w.observe(10, t0 + STALL_AFTER / 2), Verdict::Alive);
        assert_eq!(w.observe(10, t0 + STALL_AFTER), Verdict::Stalled);
        assert_eq!(w.kicks, 1);
        // The NMI's handler runs (the time moves), then the machine halts again.
        let k = t0 + STALL_AFTER;
        assert_eq!(w.observe(11, k + Duration::from_secs(1)), Verdict::Alive);
        assert_eq!(w.observe(11, k + STALL_AFTER / 2), Verdict::Alive);
        assert_eq!(
            w.observe(11, k + Duration::from_secs(1) + STALL_AFTER),
            Verdict::Dead
        );

        // A stall long after the last kick gets a kick of its own.
        let mut w = Watch::new(t0);
        w.observe(10, t0);
        assert_eq!(w.observe(10, k), Verdict::Stalled);
        let later = k + REVIVE_WINDOW + Duration::from_secs(1);
        assert_eq!(w.observe(12, later), Verdict::Alive);
        assert_eq!(w.observe(12, later + STALL_AFTER), Verdict::Stalled);
        assert_eq!(w.kicks, 2);
    }

    #[test]
    fn monitor_talks_to_a_prompting_server() {
        let dir = std::env::temp_dir().join(format!("thinvm-mon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"QEMU monitor\r\n(qemu) ").unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            s.write_all(format!("echo {}\r\n(qemu) ", line.trim()).as_bytes())
                .unwrap();
        });
        let m = Monitor::new(&path);
        assert!(m.qemu_arg().starts_with("unix:"));
        let out = m.commands(&["info lapic"]).unwrap();
        assert!(out.contains("echo info lapic"), "{out}");
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
