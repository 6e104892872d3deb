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
    /// Prints "hello", drives its virtio-blk disk (PCI 00:01.0) through [`BLK_IO`], prints
    /// "blk ok", then waits for the power button as `Button` does.
    Blk,
}

/// What the `Blk` guest does to its disk, in order: (write?, first sector, bytes). The write
/// carries 0x3c bytes.
pub const BLK_IO: [(bool, u64, u32); 3] = [(true, 8, 1536), (false, 0, 512), (false, 16, 4096)];
/// Where the `Blk` guest moves its disk's BAR 0 (inside the entry page tables' first GiB).
const BLK_BAR: u32 = 0x1000_0000;
/// The `Blk` guest's queue: descriptors, avail ring, used ring, headers and status, data.
const BLK_DATA: u64 = 0x30_0000;
const BLK_AVAIL: u64 = BLK_DATA + 0x1000;
const BLK_USED: u64 = BLK_DATA + 0x2000;
const BLK_HDR: u64 = BLK_DATA + 0x3000;

/// mov byte/word/dword [abs32], imm (64-bit mode, SIB absolute: no RIP-relative address).
fn store(c: &mut Vec<u8>, addr: u32, v: u32, width: u8) {
    match width {
        1 => c.extend([0xc6, 0x04, 0x25]),
        2 => c.extend([0x66, 0xc7, 0x04, 0x25]),
        _ => c.extend([0xc7, 0x04, 0x25]),
    }
    c.extend(addr.to_le_bytes());
    c.extend(&v.to_le_bytes()[..usize::from(width)]);
}

/// A configuration dword write through ports 0xCF8/0xCFC.
fn pci_write(c: &mut Vec<u8>, dev: u8, reg: u8, v: u32) {
    let addr = 0x8000_0000u32 | u32::from(dev) << 11 | u32::from(reg);
    c.extend([0x66, 0xba, 0xf8, 0x0c, 0xb8]); // mov dx, 0xcf8; mov eax, addr
    c.extend(addr.to_le_bytes());
    c.extend([0xef, 0x66, 0xba, 0xfc, 0x0c, 0xb8]); // out; mov dx, 0xcfc; mov eax, v
    c.extend(v.to_le_bytes());
    c.push(0xef);
}

fn print(c: &mut Vec<u8>, text: &[u8]) {
    c.extend([0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    for b in text {
        c.extend([0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
}

/// The virtio-blk driver of the `Blk` guest (its rings and buffers come from [`blk_data`]).
fn blk_driver(c: &mut Vec<u8>) {
    pci_write(c, 1, 0x10, BLK_BAR);
    pci_write(c, 1, 0x14, 0);
    pci_write(c, 1, 0x04, 6);
    let bar = BLK_BAR;
    for (off, v, w) in [
        (0x14, 1, 1),
        (0x14, 3, 1),
        (0x08, 1, 4),
        (0x0c, 1, 4), // VERSION_1
        (0x14, 0xb, 1),
        (0x18, 16, 2),
        (0x20, BLK_DATA as u32, 4),
        (0x24, 0, 4),
        (0x28, BLK_AVAIL as u32, 4),
        (0x2c, 0, 4),
        (0x30, BLK_USED as u32, 4),
        (0x34, 0, 4),
        (0x1c, 1, 2),
        (0x14, 0xf, 1),
        (0x3000, 0, 2), // notify queue 0
    ] {
        store(c, bar + off, v, w);
    }
    // wait: mov al, [used.idx]; cmp al, n; jne wait
    let top = c.len();
    c.extend([0x8a, 0x04, 0x25]);
    c.extend((BLK_USED as u32 + 2).to_le_bytes());
    c.extend([0x3c, BLK_IO.len() as u8, 0x75]);
    c.push((top as isize - (c.len() as isize + 1)) as i8 as u8);
}

/// The `Blk` guest's data segment at [`BLK_DATA`]: descriptors, avail ring, request headers.
fn blk_data() -> Vec<u8> {
    let mut d = vec![0u8; 0x1_0000];
    let mut put = |at: u64, bytes: &[u8]| {
        let at = (at - BLK_DATA) as usize;
        d[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(BLK_AVAIL + 2, &(BLK_IO.len() as u16).to_le_bytes());
    for (i, (write, sector, len)) in BLK_IO.iter().enumerate() {
        let head = (i * 3) as u16;
        let hdr = BLK_HDR + i as u64 * 16;
        let status = BLK_HDR + 0x100 + i as u64;
        let data = BLK_DATA + 0x4000 + i as u64 * 0x2000;
        let mut h = u32::from(*write).to_le_bytes().to_vec();
        h.extend([0; 4]);
        h.extend(sector.to_le_bytes());
        put(hdr, &h);
        if *write {
            put(data, &vec![0x3c; *len as usize]);
        }
        let data_flags: u16 = if *write { 1 } else { 3 };
        for (k, (addr, l, flags)) in [(hdr, 16, 1u16), (data, *len, data_flags), (status, 1, 2)]
            .into_iter()
            .enumerate()
        {
            let mut e = addr.to_le_bytes().to_vec();
            e.extend(l.to_le_bytes());
            e.extend(flags.to_le_bytes());
            e.extend((head + k as u16 + 1).to_le_bytes());
            put(BLK_DATA + u64::from(head + k as u16) * 16, &e);
        }
        put(BLK_AVAIL + 4 + 2 * i as u64, &head.to_le_bytes());
    }
    d
}

fn code(g: Guest) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"hello\n" {
        c.extend([0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    let halt = [0xfa, 0xf4, 0xeb, 0xfd]; // cli; hlt; jmp back to hlt
    if let Guest::Blk = g {
        blk_driver(&mut c);
        print(&mut c, b"blk ok\n");
    }
    match g {
        Guest::Idle => c.extend(halt),
        Guest::Button | Guest::Blk => {
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

/// Writes the guest as an ELF64 executable: its code in a PT_LOAD segment at 2 MiB (and the
/// `Blk` guest's queue in a second one at 3 MiB).
pub fn write_guest(path: &Path, g: Guest) {
    let code = code(g);
    let data = match g {
        Guest::Blk => blk_data(),
        _ => Vec::new(),
    };
    let phnum: u16 = if data.is_empty() { 1 } else { 2 };
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
    for v in [64u16, 56, phnum, 0, 0, 0] {
        f.extend(v.to_le_bytes());
    }
    let code_at = 64 + 56 * u64::from(phnum);
    let len = code.len() as u64;
    f.extend(1u32.to_le_bytes()); // PT_LOAD
    f.extend(5u32.to_le_bytes()); // R X
    for v in [code_at, LOAD, LOAD, len, len, 0x1000] {
        f.extend(v.to_le_bytes());
    }
    if !data.is_empty() {
        let dlen = data.len() as u64;
        f.extend(1u32.to_le_bytes()); // PT_LOAD
        f.extend(6u32.to_le_bytes()); // R W
        for v in [code_at + len, BLK_DATA, BLK_DATA, dlen, dlen, 0x1000] {
            f.extend(v.to_le_bytes());
        }
    }
    f.extend(code);
    f.extend(data);
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
    write_guest(&dir.join("images/blk"), Guest::Blk);
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

/// A VM's `state` in a daemon answer (`""` if it has none).
pub fn state(v: &Value) -> &str {
    v["state"].as_str().unwrap_or("")
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
