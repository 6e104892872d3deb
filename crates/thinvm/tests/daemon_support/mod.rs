//! Shared by the daemon and per-VM API tests: hand-made guests as tiny ELF kernels (64-bit entry,
//! CPL0, so they stay a few instructions long on a PVM host), a thinvmd process, and cleanup.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::client::Client;
use serde_json::Value;

pub const THINVM: &str = env!("CARGO_BIN_EXE_thinvm");
const LOAD: u64 = 0x20_0000;

/// Guest programs.
#[derive(Clone, Copy)]
pub enum Guest {
    /// Prints "hello", then halts with interrupts off (only a hard stop ends it; no CPU used).
    Idle,
    /// Prints "hello", then polls PM1_STS for the power button and powers off (ACPI S5).
    Button,
    /// Prints "hello", then reports a panic on the pvpanic port.
    Panic,
    /// Prints "hello", then echoes every byte received on the serial port (polls LSR).
    Echo,
}

fn code(g: Guest) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"hello\n" {
        c.extend([0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    let halt = [0xfa, 0xf4, 0xeb, 0xfd]; // cli; hlt; jmp back to hlt
    match g {
        Guest::Idle => c.extend(halt),
        Guest::Button => {
            // poll: mov dx, 0x600; in ax, dx; test ax, 0x100; jz poll
            let poll = [0x66, 0xba, 0x00, 0x06, 0x66, 0xed, 0x66, 0xa9, 0x00, 0x01];
            c.extend(poll);
            c.extend([0x74, (256 - (poll.len() + 2)) as u8]);
            // mov dx, 0x604; mov ax, SLP_TYP=5 | SLP_EN; out dx, ax; jmp $
            c.extend([
                0x66, 0xba, 0x04, 0x06, 0x66, 0xb8, 0x00, 0x34, 0x66, 0xef, 0xeb, 0xfe,
            ]);
        }
        Guest::Echo => {
            // poll: mov dx, 0x3fd; in al, dx; test al, 1; jz poll
            let poll = [0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01];
            c.extend(poll);
            c.extend([0x74, (256 - (poll.len() + 2)) as u8]);
            // mov dx, 0x3f8; in al, dx; out dx, al; jmp poll
            let echo = [0x66, 0xba, 0xf8, 0x03, 0xec, 0xee];
            c.extend(echo);
            c.extend([0xeb, (256 - (poll.len() + 2 + echo.len() + 2)) as u8]);
        }
        Guest::Panic => {
            c.extend([0x66, 0xba, 0x05, 0x05, 0xb0, 0x01, 0xee]); // mov dx, 0x505; mov al, 1; out
            c.extend(halt);
        }
    }
    c
}

/// Writes the guest as an ELF64 executable with one PT_LOAD segment at 2 MiB.
pub fn write_guest(path: &Path, g: Guest) {
    let code = code(g);
    let mut f = Vec::new();
    f.extend(b"\x7fELF");
    f.extend([2, 1, 1, 0]);
    f.extend([0u8; 8]);
    f.extend(2u16.to_le_bytes()); // ET_EXEC
    f.extend(0x3eu16.to_le_bytes()); // x86-64
    f.extend(1u32.to_le_bytes());
    f.extend(LOAD.to_le_bytes()); // entry
    f.extend(64u64.to_le_bytes()); // phoff
    f.extend(0u64.to_le_bytes()); // shoff
    f.extend(0u32.to_le_bytes());
    for v in [64u16, 56, 1, 0, 0, 0] {
        f.extend(v.to_le_bytes());
    }
    let len = code.len() as u64;
    f.extend(1u32.to_le_bytes()); // PT_LOAD
    f.extend(5u32.to_le_bytes()); // R X
    for v in [120u64, LOAD, LOAD, len, len, 0x1000] {
        f.extend(v.to_le_bytes());
    }
    f.extend(code);
    std::fs::write(path, f).unwrap();
}

/// A scratch folder with the three guests in `images/`.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("thinvm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    write_guest(&dir.join("images/idle"), Guest::Idle);
    write_guest(&dir.join("images/button"), Guest::Button);
    write_guest(&dir.join("images/panic"), Guest::Panic);
    write_guest(&dir.join("images/echo"), Guest::Echo);
    dir
}

/// Whether this host can run the KVM tests.
pub fn have_kvm() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("skipped: /dev/kvm is not usable here");
    }
    ok
}

/// A thinvmd process on a scratch folder.
pub struct Thinvmd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
    pub client: Client,
}

impl Thinvmd {
    /// Starts `thinvm daemon` (stop timeout 20 s unless a call says otherwise, backoff 200 ms).
    pub fn start(dir: &Path) -> Self {
        let socket = dir.join("thinvmd.sock");
        let mut d = Thinvmd {
            dir: dir.to_path_buf(),
            client: Client::new(&socket),
            socket,
            child: None,
        };
        d.spawn();
        d
    }

    /// (Re)starts the daemon process and waits for its socket.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let child = Command::new(THINVM)
            .args([
                "--log-level",
                "info",
                "daemon",
                "--group",
                "root",
                "--stop-timeout",
                "20",
            ])
            .args(["--backoff-ms", "200", "--log-max", "64K"])
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--allow-dir")
            .arg(self.dir.join("images"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t0 = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "thinvmd did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the daemon (its VMMs go on).
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Every VMM process whose command line names this daemon's state folder.
    pub fn vmm_pids(&self) -> Vec<i32> {
        let state = self.dir.join("state").display().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(" vmm ") && cmd.contains(&state) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Thinvmd {
    fn drop(&mut self) {
        self.sigkill();
        for pid in self.vmm_pids() {
            // SAFETY: kill with a pid read from /proc and a signal number.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("daemon log:\n{}", self.log());
        }
    }
}

/// One call: (status, JSON or text body).
pub async fn call(c: &Client, method: &str, uri: &str, body: Option<&Value>) -> (u16, Value) {
    let r = c
        .request(method, uri, body.map(|b| b.to_string().into_bytes()))
        .await
        .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into()));
    (r.status, v)
}

/// Polls `GET /v1/vms/NAME` until `pred` holds (or panics after `secs`).
pub async fn wait_vm(c: &Client, name: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let (_, v) = call(c, "GET", &format!("/v1/vms/{name}"), None).await;
        if pred(&v) {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{name}: condition not reached: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A VM definition.
pub fn spec(name: &str, dir: &Path, guest: &str, restart: &str) -> Value {
    serde_json::json!({
        "name": name,
        "kernel": dir.join("images").join(guest),
        "memory": 32u64 << 20,
        "restart": restart,
    })
}

/// Reads `n` server-sent events from `/v1/events` (resuming after `last_id`).
pub async fn read_sse(c: &Client, last_id: Option<i64>, n: usize) -> Vec<Value> {
    read_sse_idle(c, last_id, n, Duration::from_secs(5)).await
}

/// As [`read_sse`], stopping early once the stream is quiet for `idle`.
pub async fn read_sse_idle(
    c: &Client,
    last_id: Option<i64>,
    n: usize,
    idle: Duration,
) -> Vec<Value> {
    use http_body_util::BodyExt;
    let id = last_id.map(|i| i.to_string());
    let headers: Vec<(&str, &str)> = id.iter().map(|i| ("last-event-id", i.as_str())).collect();
    let resp = c.open("GET", "/v1/events", &headers, None).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = String::new();
    loop {
        // Only whole lines: a frame may end mid-line.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let events: Vec<Value> = whole
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        if events.len() >= n {
            return events.into_iter().take(n).collect();
        }
        let frame = tokio::time::timeout(idle, body.frame()).await;
        let Ok(Some(Ok(frame))) = frame else {
            return events;
        };
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
}
