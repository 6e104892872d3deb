//! A driver that resets the device (status 0: Linux's driver unbound, reloaded, kexec) and sets
//! it up again on other rings. Linux resets its own sockets and never tells the device, so the
//! reset must close every host socket (the peers read EOF), leave no connection counted as
//! active, and a second activation must start afresh: new rings, new ports, both directions.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::harness::{hdr, Irq, TempDir, CID, RING, RX_BUF, RX_LEN, TX_BUF, TX_LEN};
use super::packet::{op, Header, HDR_LEN};
use super::*;
use crate::virtio::testmem::{TestRing, MEM_SIZE, NEXT, WRITE};
use crate::virtio::VirtioDevice;

/// One activation's rings (rx, tx, event at `base`, `base + 0x1_0000`, `base + 0x2_0000`) and
/// the kicks of its queues.
struct Life {
    rx: TestRing,
    tx: TestRing,
    kicks: Vec<EventFd>,
    rx_seen: u16,
    tx_next: u16,
}

impl Life {
    fn activate(v: &mut Vsock, mem: &GuestMemoryMmap, base: u64) -> Life {
        let rings: Vec<TestRing> = (0..3)
            .map(|i| TestRing::at(mem, base + 0x1_0000 * i, RING))
            .collect();
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let kicks = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let queues = rings.iter().map(|r| r.queue()).collect();
        v.activate(mem.clone(), Arc::new(Irq::default()), queues, evts)
            .unwrap();
        let mut rings = rings.into_iter();
        let mut life = Life {
            rx: rings.next().unwrap(),
            tx: rings.next().unwrap(),
            kicks,
            rx_seen: 0,
            tx_next: 0,
        };
        for i in 0..8 {
            let at = RX_BUF + u64::from(i) * u64::from(RX_LEN);
            life.rx.desc(i, at, RX_LEN, WRITE, 0);
            life.rx.push(i);
        }
        life.kicks[0].write(1).unwrap();
        life
    }

    /// Sends one packet from the guest and notifies the tx queue.
    fn send(&mut self, h: Header, payload: &[u8]) {
        let i = self.tx_next * 2;
        self.tx_next += 1;
        let at = TX_BUF + u64::from(i / 2) * TX_LEN;
        self.tx.write_bytes(at, &h.to_bytes());
        self.tx.write_bytes(at + HDR_LEN as u64, payload);
        if payload.is_empty() {
            self.tx.desc(i, at, HDR_LEN as u32, 0, 0);
        } else {
            self.tx.desc(i, at, HDR_LEN as u32, NEXT, i + 1);
            let len = payload.len() as u32;
            self.tx.desc(i + 1, at + HDR_LEN as u64, len, 0, 0);
        }
        self.tx.push(i);
        self.kicks[1].write(1).unwrap();
    }

    /// The next packet the device gave the guest (5 s at most).
    fn recv(&mut self) -> (Header, Vec<u8>) {
        let start = Instant::now();
        while self.rx.used_idx() == self.rx_seen {
            assert!(start.elapsed() < Duration::from_secs(5), "no rx packet");
            std::thread::sleep(Duration::from_millis(2));
        }
        let (id, len) = self.rx.used(self.rx_seen);
        self.rx_seen += 1;
        let bytes = self
            .rx
            .read_bytes(RX_BUF + u64::from(id) * u64::from(RX_LEN), len as usize);
        let h = Header::parse(bytes[..HDR_LEN].try_into().unwrap());
        (h, bytes[HDR_LEN..].to_vec())
    }

    /// A guest connection from `src` to host port `port`, accepted on `l`.
    fn guest_connect(&mut self, l: &UnixListener, src: u32, port: u32) -> UnixStream {
        self.send(hdr(op::REQUEST, src, port, 0), &[]);
        let (h, _) = self.recv();
        assert_eq!((h.op, h.src_port, h.dst_port), (op::RESPONSE, port, src));
        let (mut s, _) = l.accept().unwrap();
        self.send(hdr(op::RW, src, port, 5), b"hello");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        s
    }

    /// A host connection to guest port `port`, answered by the guest; returns the stream and
    /// the host port the guest saw.
    fn host_connect(&mut self, path: &Path, port: u32) -> (UnixStream, u32) {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let (req, _) = self.recv();
        assert_eq!((req.op, req.dst_port), (op::REQUEST, port));
        self.send(hdr(op::RESPONSE, port, req.src_port, 0), &[]);
        let want = format!("OK {}\n", req.src_port);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), want);
        (s, req.src_port)
    }
}

fn reads_eof(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    matches!(s.read(&mut [0u8; 8]), Ok(0))
}

#[test]
fn a_reset_closes_every_host_socket_and_a_second_activation_starts_afresh() {
    let d = TempDir::new();
    let path = d.0.join("v.sock");
    let mut v = Vsock::new(CID, &path).unwrap();
    let stats = v.stats();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let listen = UnixListener::bind(d.0.join("v.sock_6000")).unwrap();

    let mut first = Life::activate(&mut v, &mem, 0x1_0000);
    let mut to_host = first.guest_connect(&listen, 1234, 6000);
    let (mut from_host, port) = first.host_connect(&path, 5000);
    assert_eq!(stats.active.load(Ordering::Relaxed), 2);

    // Reset with both connections open: their host ends read EOF, none stays active.
    v.reset();
    assert!(reads_eof(&mut to_host), "the guest's connection is closed");
    assert!(reads_eof(&mut from_host), "the host's connection is closed");
    assert_eq!(stats.active.load(Ordering::Relaxed), 0, "nothing is open");
    let used_before = (first.rx.used_idx(), first.tx.used_idx());

    // A host client that connects while the device is reset waits in the listener's backlog.
    let mut early = UnixStream::connect(&path).unwrap();
    early.write_all(b"CONNECT 5001\n").unwrap();

    // Second life on other rings: the same guest port and host port are usable again, and the
    // host ports start over.
    let mut second = Life::activate(&mut v, &mem, 0x5_0000);
    let (req, _) = second.recv();
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 5001));
    assert_eq!(req.src_port, port, "host ports start over after a reset");
    second.send(hdr(op::RST, 5001, req.src_port, 0), &[]);
    assert!(reads_eof(&mut early), "refused by the guest");
    let mut again = second.guest_connect(&listen, 1234, 6000);
    let (mut back, _) = second.host_connect(&path, 5000);
    again.write_all(b"world").unwrap();
    let (h, data) = second.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RW, 6000, 1234));
    assert_eq!(data, b"world");
    back.write_all(b"x").unwrap();
    let (h, data) = second.recv();
    assert_eq!(
        (h.op, h.dst_port, data.as_slice()),
        (op::RW, 5000, &b"x"[..])
    );
    assert_eq!(stats.active.load(Ordering::Relaxed), 2);
    assert_eq!(
        (first.rx.used_idx(), first.tx.used_idx()),
        used_before,
        "the old rings are not served after the reset"
    );
    drop(v);
    assert!(reads_eof(&mut again) && reads_eof(&mut back));
    assert_eq!(stats.active.load(Ordering::Relaxed), 0);
}
