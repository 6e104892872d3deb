//! Connections through the worker with real Unix sockets: both directions, resets, credit,
//! shutdown, limits. Hostile chains are in `hostile_tests.rs`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use super::harness::*;
use super::packet::{op, Header, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::*;

fn ops(p: &[(Header, Vec<u8>)]) -> Vec<u16> {
    p.iter().map(|(h, _)| h.op).collect()
}

#[test]
fn guest_connects_to_a_host_listener_and_data_flows_both_ways() {
    let mut g = Guest::new();
    g.post_rx(8, RX_LEN);
    let l = g.host_listener(6000);
    g.send(hdr(op::REQUEST, 1234, 6000, 0), &[]);
    let got = g.recv_n(1);
    assert_eq!(ops(&got), [op::RESPONSE]);
    let h = got[0].0;
    assert_eq!(
        (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (2, CID, 6000, 1234)
    );
    assert_eq!(h.buf_alloc, CONN_BUF);
    let (mut host, _) = l.accept().unwrap();

    g.send(hdr(op::RW, 1234, 6000, 5), b"hello");
    assert_eq!(read_n(&mut host, 5), b"hello");

    host.write_all(b"world").unwrap();
    let got = g.recv_n(1);
    assert_eq!(ops(&got), [op::RW]);
    assert_eq!(got[0].1, b"world");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (6000, 1234));

    assert_eq!(g.stats.connections.load(Ordering::Relaxed), 1);
    assert_eq!(g.stats.active.load(Ordering::Relaxed), 1);
    assert_eq!(g.stats.to_host_bytes.load(Ordering::Relaxed), 5);
    assert_eq!(g.stats.to_guest_bytes.load(Ordering::Relaxed), 5);
    assert_eq!(g.stats.refused.load(Ordering::Relaxed), 0);
}

#[test]
fn host_connect_gets_ok_after_the_guest_response_then_bridges() {
    let mut g = Guest::new();
    g.post_rx(8, RX_LEN);
    let (mut host, req) = g.host_connect(5000);
    let local = req.src_port;
    assert!(
        local >= 1 << 30,
        "host ports come from the high range: {local}"
    );
    // Data the host sends before OK waits in the socket.
    host.write_all(b"early").unwrap();
    g.pump(20);
    assert!(g.recv().is_empty(), "nothing before the guest answers");

    g.send(hdr(op::RESPONSE, 5000, local, 0), &[]);
    assert_eq!(
        read_n(&mut host, format!("OK {local}\n").len()),
        format!("OK {local}\n").as_bytes()
    );
    let got = g.recv_n(1);
    assert_eq!(ops(&got), [op::RW]);
    assert_eq!(got[0].1, b"early");

    g.send(hdr(op::RW, 5000, local, 3), b"abc");
    assert_eq!(read_n(&mut host, 3), b"abc");
}

#[test]
fn guest_reset_closes_the_host_connection() {
    let mut g = Guest::new();
    g.post_rx(8, RX_LEN);
    let (mut host, req) = g.host_connect(5001);
    g.send(hdr(op::RST, 5001, req.src_port, 0), &[]);
    let mut b = [0u8; 8];
    assert_eq!(
        host.read(&mut b).unwrap(),
        0,
        "EOF: nothing listens in the guest"
    );
    assert_eq!(g.stats.active.load(Ordering::Relaxed), 0);
}

#[test]
fn bad_connect_lines_are_closed() {
    let mut g = Guest::new();
    g.post_rx(8, RX_LEN);
    for line in [
        "CONNECT\n",
        "CONNECT x\n",
        "HELLO 5\n",
        "CONNECT 99999999999\n",
        "CONNECT 12345678901234567890123456789\n",
    ] {
        let mut s = UnixStream::connect(&g.path).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        g.pump(20);
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 8];
        // EOF, or a reset when the device left part of a long line unread.
        let r = s.read(&mut b);
        assert!(matches!(r, Ok(0)) || r.is_err(), "{line:?} closed: {r:?}");
    }
    assert!(g.recv().is_empty(), "the guest saw no request");
    assert_eq!(parse_connect(b"CONNECT 42"), Some(42));
    assert_eq!(parse_connect(b"CONNECT +42"), None);
}

#[test]
fn unknown_port_and_stray_packets_get_a_reset() {
    let mut g = Guest::new();
    g.post_rx(8, RX_LEN);
    g.send(hdr(op::REQUEST, 1000, 7777, 0), &[]);
    g.send(hdr(op::RW, 1001, 7778, 2), b"hi");
    g.send(hdr(op::RST, 1002, 7779, 0), &[]);
    let mut dgram = hdr(op::REQUEST, 1003, 7780, 0);
    dgram.type_ = 2;
    g.send(dgram, &[]);
    let mut bad_op = hdr(99, 1004, 7781, 0);
    bad_op.op = 99;
    g.send(bad_op, &[]);
    let got = g.recv_n(4);
    assert_eq!(ops(&got), [op::RST; 4], "no reset answers a reset");
    let ports: Vec<(u32, u32)> = got.iter().map(|(h, _)| (h.src_port, h.dst_port)).collect();
    assert_eq!(
        ports,
        [(7777, 1000), (7778, 1001), (7780, 1003), (7781, 1004)]
    );
    assert_eq!(g.stats.refused.load(Ordering::Relaxed), 2, "type and op");
}

#[test]
fn host_to_guest_data_never_exceeds_the_guest_credit() {
    let mut g = Guest::new();
    g.post_rx(16, RX_LEN);
    let l = g.host_listener(6001);
    let mut req = hdr(op::REQUEST, 1, 6001, 0);
    req.buf_alloc = 1000;
    g.send(req, &[]);
    assert_eq!(ops(&g.recv_n(1)), [op::RESPONSE]);
    let (mut host, _) = l.accept().unwrap();
    host.write_all(&[7u8; 5000]).unwrap();
    g.pump(50);
    let got: usize = g.recv().iter().map(|(_, p)| p.len()).sum();
    assert_eq!(got, 1000, "exactly the credit");
    // The guest consumed 1000 bytes and says so.
    let mut upd = hdr(op::CREDIT_UPDATE, 1, 6001, 0);
    upd.buf_alloc = 1000;
    upd.fwd_cnt = 1000;
    g.send(upd, &[]);
    g.pump(50);
    let got: usize = g.recv().iter().map(|(_, p)| p.len()).sum();
    assert_eq!(got, 1000, "the next 1000");
}

#[test]
fn guest_to_host_credit_is_updated_and_overflow_resets() {
    let mut g = Guest::new();
    g.post_rx(32, RX_LEN);
    let l = g.host_listener(6002);
    g.send(hdr(op::REQUEST, 2, 6002, 0), &[]);
    assert_eq!(ops(&g.recv_n(1)), [op::RESPONSE]);
    let (mut host, _) = l.accept().unwrap();
    // The host does not read: the socket fills, then the connection's buffer.
    let chunk = vec![1u8; 8192];
    let mut sent = 0usize;
    let mut reset = false;
    for _ in 0..400 {
        g.send(hdr(op::RW, 2, 6002, chunk.len() as u32), &chunk);
        sent += chunk.len();
        let got = g.recv();
        if ops(&got).contains(&op::RST) {
            reset = true;
            break;
        }
    }
    assert!(
        reset,
        "a guest that ignores its credit is reset (sent {sent})"
    );
    assert!(g.stats.refused.load(Ordering::Relaxed) >= 1);
    // What the host can read is bounded by its socket plus CONN_BUF.
    host.set_nonblocking(true).unwrap();
    let mut total = 0;
    let mut b = vec![0u8; 65536];
    while let Ok(n) = host.read(&mut b) {
        if n == 0 {
            break;
        }
        total += n;
    }
    // The socket took `total`; CONN_BUF more waited in the connection (dropped by the reset);
    // the packet past that was refused.
    assert!(
        total + CONN_BUF as usize <= sent,
        "host got {total} of {sent}"
    );
    assert!(
        sent - total - (CONN_BUF as usize) <= 8192,
        "host got {total} of {sent}"
    );
}

#[test]
fn credit_update_follows_the_host_draining() {
    let mut g = Guest::new();
    g.post_rx(32, RX_LEN);
    let l = g.host_listener(6003);
    g.send(hdr(op::REQUEST, 3, 6003, 0), &[]);
    assert_eq!(ops(&g.recv_n(1)), [op::RESPONSE]);
    let (mut host, _) = l.accept().unwrap();
    let chunk = vec![2u8; 8192];
    let n = CONN_BUF as usize / chunk.len();
    for _ in 0..n {
        g.send(hdr(op::RW, 3, 6003, chunk.len() as u32), &chunk);
    }
    // The host drains while the device runs (the connection's buffer waits for EPOLLOUT).
    host.set_nonblocking(true).unwrap();
    let (mut total, mut got) = (0, Vec::new());
    let mut b = vec![0u8; 65536];
    for _ in 0..500 {
        if let Ok(k) = host.read(&mut b) {
            total += k;
        }
        g.pump(5);
        got.extend(g.recv());
        if total == n * chunk.len() && !got.is_empty() {
            break;
        }
    }
    assert_eq!(total, n * chunk.len());
    let upd = got.iter().rev().find(|(h, _)| h.op == op::CREDIT_UPDATE);
    let fwd = upd.expect("a credit update").0.fwd_cnt;
    assert!(fwd as usize >= CONN_BUF as usize / 2, "fwd_cnt {fwd}");
    // A credit request is answered.
    g.send(hdr(op::CREDIT_REQUEST, 3, 6003, 0), &[]);
    let got = g.recv_n(1);
    assert_eq!(ops(&got), [op::CREDIT_UPDATE]);
    assert_eq!(got[0].0.fwd_cnt as usize, n * chunk.len());
}

#[test]
fn shutdowns_both_ways() {
    let mut g = Guest::new();
    g.post_rx(8, RX_LEN);
    let l = g.host_listener(6004);
    g.send(hdr(op::REQUEST, 4, 6004, 0), &[]);
    assert_eq!(ops(&g.recv_n(1)), [op::RESPONSE]);
    let (mut host, _) = l.accept().unwrap();
    host.write_all(b"bye").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let got = g.recv_n(2);
    assert_eq!(ops(&got), [op::RW, op::SHUTDOWN]);
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    // The guest sends its last bytes and closes: the host gets them then EOF, the guest a RST.
    g.send(hdr(op::RW, 4, 6004, 4), b"last");
    let mut sd = hdr(op::SHUTDOWN, 4, 6004, 0);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(sd, &[]);
    assert_eq!(ops(&g.recv_n(1)), [op::RST]);
    let mut all = Vec::new();
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last");
    assert_eq!(g.stats.active.load(Ordering::Relaxed), 0);
}

#[test]
fn connection_limit_resets_further_requests() {
    let mut g = Guest::new();
    g.w.muxer.max_conns = 2;
    g.post_rx(8, RX_LEN);
    let _l = g.host_listener(6005);
    for p in 10..13 {
        g.send(hdr(op::REQUEST, p, 6005, 0), &[]);
    }
    assert_eq!(ops(&g.recv_n(3)), [op::RESPONSE, op::RESPONSE, op::RST]);
    // A host connection over the limit is closed at once.
    let mut s = UnixStream::connect(&g.path).unwrap();
    g.pump(20);
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
}

#[test]
fn a_full_reset_queue_stalls_tx_until_the_guest_takes_them() {
    let mut g = Guest::new();
    // No rx buffers: every stray packet's reset waits.
    for i in 0..(MAX_RESETS as u32 + 20) {
        g.send(hdr(op::RW, i, 9, 1), b"x");
    }
    assert_eq!(
        g.tx.used_idx() as usize,
        MAX_RESETS,
        "tx stops at the backlog limit"
    );
    assert!(g.w.tx_stalled);
    let mut seen = 0;
    for _ in 0..10 {
        if seen == MAX_RESETS + 20 {
            break;
        }
        g.post_rx(RING, RX_LEN);
        seen += g.recv().len();
    }
    assert_eq!(seen, MAX_RESETS + 20, "every reset delivered");
    assert_eq!(g.tx.used_idx() as usize, MAX_RESETS + 20, "tx resumed");
}

#[test]
fn the_listening_socket_replaces_stale_sockets_only() {
    let d = TempDir::new();
    let p = d.0.join("s");
    let first = Listener::bind(&p).unwrap();
    std::mem::forget(first); // a VMM that died: its socket file stays
    assert!(Listener::bind(&p).is_ok(), "stale socket replaced");
    assert!(!p.exists(), "removed on drop");
    let f = d.0.join("file");
    std::fs::write(&f, b"x").unwrap();
    let err = Listener::bind(&f).err().unwrap().to_string();
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&f).unwrap(), b"x");
    let long = d.0.join("x".repeat(120));
    assert!(Listener::bind(&long).is_err());
}

#[test]
fn device_identity_and_cids() {
    let d = TempDir::new();
    for bad in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        assert!(
            matches!(Vsock::new(bad, &d.0.join("c")), Err(VsockError::Cid(_))),
            "{bad}"
        );
    }
    let v = Vsock::new(42, &d.0.join("c")).unwrap();
    assert_eq!(v.device_type(), 19);
    assert_eq!(v.queue_max_sizes().len(), 3);
    assert_eq!(v.features(), F_VERSION_1 | F_RING_EVENT_IDX);
    let mut cfg = [0xffu8; 8];
    v.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 42);
    let mut hi = [0xffu8; 4];
    v.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
}

#[test]
fn activated_device_serves_a_host_connect_from_its_thread() {
    use crate::virtio::testmem::{TestRing, MEM_SIZE, WRITE};
    use crate::virtio::VirtioDevice;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let d = TempDir::new();
    let path = d.0.join("dev.sock");
    let mut v = Vsock::new(CID, &path).unwrap();
    let mem =
        vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), MEM_SIZE as usize)])
            .unwrap();
    let rings: Vec<TestRing> = (0..3)
        .map(|i| TestRing::at(&mem, 0x1_0000 * (i + 1), RING))
        .collect();
    let mut rx = TestRing::at(&mem, 0x1_0000, RING);
    rx.desc(0, RX_BUF, RX_LEN, WRITE, 0);
    rx.push(0);
    let evts: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let irq = std::sync::Arc::new(Irq::default());
    let queues = rings.iter().map(|r| r.queue()).collect();
    v.activate(mem.clone(), irq.clone(), queues, evts).unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"CONNECT 99\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while rx.used_idx() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (_, len) = rx.used(0);
    assert_eq!(len as usize, packet::HDR_LEN);
    let h = Header::parse(
        rx.read_bytes(RX_BUF, packet::HDR_LEN)[..]
            .try_into()
            .unwrap(),
    );
    assert_eq!((h.op, h.dst_port, h.dst_cid), (op::REQUEST, 99, CID));
    assert!(irq.0.load(Ordering::SeqCst) >= 1);
    // Reset drops the worker and with it the host connection.
    v.reset();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
    drop(v);
    assert!(!path.exists(), "the socket file goes with the device");
}
