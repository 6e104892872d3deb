//! Test harness: a vsock worker driven by hand on test memory, with its Unix sockets in a
//! temporary folder. The "guest" writes packets into the tx ring and posts rx buffers.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use super::muxer::Muxer;
use super::packet::{op, Header, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::worker::{VsockWorker, RX, TX};
use super::{Listener, VsockStats};
use crate::virtio::testmem::{TestRing, MEM_SIZE, NEXT, WRITE};
use crate::virtio::{InterruptKind, Poller, QueueHandler, VirtioInterrupt};

pub const CID: u64 = 3;
pub const RING: u16 = 64;
/// rx buffers: 64 slots of 32 KiB from 0x100000.
pub const RX_BUF: u64 = 0x10_0000;
pub const RX_LEN: u32 = 0x8000;
/// tx packets: 64 slots of 16 KiB from 0x300000 (header, then payload).
pub const TX_BUF: u64 = 0x30_0000;
pub const TX_LEN: u64 = 0x4000;

#[derive(Default)]
pub struct Irq(pub AtomicU32);
impl VirtioInterrupt for Irq {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("thinvm-vsock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Guest {
    pub w: VsockWorker,
    pub rx: TestRing,
    pub tx: TestRing,
    pub poller: Poller,
    pub stats: Arc<VsockStats>,
    pub path: PathBuf,
    rx_seen: u16,
    rx_slot: u16,
    tx_slot: u16,
    _listener: Listener,
    _dir: TempDir,
}

pub fn hdr(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

impl Guest {
    pub fn new() -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("v.sock");
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), MEM_SIZE as usize)])
            .unwrap();
        let rx = TestRing::at(&mem, 0x1_0000, RING);
        let tx = TestRing::at(&mem, 0x2_0000, RING);
        let ev = TestRing::at(&mem, 0x3_0000, RING);
        let listener = Listener::bind(&path).unwrap();
        let poller = Poller::new().unwrap();
        let stats = Arc::new(VsockStats::default());
        let muxer = Muxer::new(
            CID,
            path.clone(),
            listener.try_clone().unwrap(),
            poller.clone(),
            stats.clone(),
        )
        .unwrap();
        let w = VsockWorker {
            mem,
            rx: rx.queue(),
            tx: tx.queue(),
            _event: ev.queue(),
            cid: CID,
            muxer,
            interrupt: Arc::new(Irq::default()),
            stats: stats.clone(),
            log: crate::legacy::GuestLog::default(),
            tx_stalled: false,
            buf: Vec::new(),
        };
        Guest {
            w,
            rx,
            tx,
            poller,
            stats,
            path,
            rx_seen: 0,
            rx_slot: 0,
            tx_slot: 0,
            _listener: listener,
            _dir: dir,
        }
    }

    /// Posts `n` rx buffers of `len` bytes (one descriptor each) and notifies.
    pub fn post_rx(&mut self, n: u16, len: u32) {
        for _ in 0..n {
            let i = self.rx_slot % RING;
            self.rx_slot = self.rx_slot.wrapping_add(1);
            self.rx
                .desc(i, RX_BUF + u64::from(i) * u64::from(RX_LEN), len, WRITE, 0);
            self.rx.push(i);
        }
        self.w.handle_queue(RX);
    }

    /// Queues a raw tx chain (descriptors already written) with head `i` and notifies.
    pub fn push_tx(&mut self, head: u16) {
        self.tx.push(head);
        self.w.handle_queue(TX);
    }

    /// A free tx slot: (descriptor index, buffer address).
    pub fn tx_slot(&mut self) -> (u16, u64) {
        // Two descriptors per packet: header and payload.
        let i = (self.tx_slot % (RING / 2)) * 2;
        self.tx_slot = self.tx_slot.wrapping_add(1);
        (i, TX_BUF + u64::from(i / 2) * TX_LEN)
    }

    /// Sends a packet from the guest: header and payload in two descriptors.
    pub fn send(&mut self, h: Header, payload: &[u8]) {
        assert!(payload.len() as u64 <= TX_LEN - HDR_LEN as u64);
        let (i, at) = self.tx_slot();
        self.tx.write_bytes(at, &h.to_bytes());
        self.tx.write_bytes(at + HDR_LEN as u64, payload);
        if payload.is_empty() {
            self.tx.desc(i, at, HDR_LEN as u32, 0, 0);
        } else {
            self.tx.desc(i, at, HDR_LEN as u32, NEXT, i + 1);
            let len = payload.len() as u32;
            self.tx.desc(i + 1, at + HDR_LEN as u64, len, 0, 0);
        }
        self.push_tx(i);
    }

    /// The packets the device put in rx buffers since the last call.
    pub fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != self.rx.used_idx() {
            let (id, len) = self.rx.used(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            if len == 0 {
                out.push((Header::default(), Vec::new()));
                continue;
            }
            let at = RX_BUF + u64::from(id) * u64::from(RX_LEN);
            let bytes = self.rx.read_bytes(at, len as usize);
            let h = Header::parse(bytes[..HDR_LEN].try_into().unwrap());
            assert_eq!(
                h.len as usize,
                bytes.len() - HDR_LEN,
                "len matches the used length"
            );
            out.push((h, bytes[HDR_LEN..].to_vec()));
        }
        out
    }

    /// Dispatches socket events to the worker until none comes for `quiet_ms`.
    pub fn pump(&mut self, quiet_ms: i32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let evs = self.poller.wait_handler_events(quiet_ms).unwrap();
            if evs.is_empty() {
                return;
            }
            for (t, e) in evs {
                self.w.handle_fd(t, e);
            }
        }
    }

    /// Pumps and receives until `n` packets came (or 5 s).
    pub fn recv_n(&mut self, n: usize) -> Vec<(Header, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = self.recv();
        while got.len() < n && Instant::now() < deadline {
            self.pump(20);
            got.extend(self.recv());
        }
        got
    }

    /// A host listener for guest connections to `port`.
    pub fn host_listener(&self, port: u32) -> UnixListener {
        let mut p = self.path.clone().into_os_string();
        p.push(format!("_{port}"));
        UnixListener::bind(PathBuf::from(p)).unwrap()
    }

    /// Connects to the device from the host and sends `CONNECT port`; returns the stream and
    /// the REQUEST the guest got.
    pub fn host_connect(&mut self, port: u32) -> (UnixStream, Header) {
        let mut s = UnixStream::connect(&self.path).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let got = self.recv_n(1);
        assert_eq!(got.len(), 1, "one REQUEST");
        let h = got[0].0;
        assert_eq!(
            (h.op, h.dst_port, h.src_cid, h.dst_cid),
            (op::REQUEST, port, 2, CID)
        );
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (s, h)
    }
}

/// Reads exactly `n` bytes (5 s timeout).
pub fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut v = vec![0; n];
    s.read_exact(&mut v).unwrap();
    v
}
