//! Timeouts of host connections: a REQUEST the guest never answers, a CONNECT line never
//! finished. The time is injected (`Muxer::expire(now)`), except in the test of the timerfd.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::harness::*;
use super::packet::{op, Header};
use super::*;

const HOUR: Duration = Duration::from_secs(3600);
const NS: Duration = Duration::from_nanos(1);

fn ops(p: &[(Header, Vec<u8>)]) -> Vec<u16> {
    p.iter().map(|(h, _)| h.op).collect()
}

/// Whether the device closed `s`: EOF (or a reset); `false` if it is open and quiet.
fn closed(s: &mut UnixStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let r = s.read(&mut [0u8; 64]);
    s.set_nonblocking(false).unwrap();
    match r {
        Ok(0) => true,
        Ok(n) => panic!("{n} unexpected bytes"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Runs the expiry at `now` and hands the guest what it produced.
fn expire(g: &mut Guest, now: Instant) -> Vec<(Header, Vec<u8>)> {
    g.w.muxer.expire(now);
    g.w.process_rx();
    g.recv()
}

#[test]
fn an_unanswered_request_expires_at_its_deadline_and_not_before() {
    let mut g = Guest::new();
    g.post_rx(8, RX_LEN);
    let before = Instant::now();
    let (mut host, req) = g.host_connect(5000);
    let after = Instant::now();
    let due = g.w.muxer.next_deadline().expect("a deadline");
    assert!(
        before + CONNECT_TIMEOUT <= due && due <= after + CONNECT_TIMEOUT,
        "the deadline is CONNECT_TIMEOUT after the CONNECT line"
    );
    assert!(expire(&mut g, due - NS).is_empty());
    assert!(!closed(&mut host), "open until the deadline");
    assert_eq!(g.w.muxer.live(), 1);

    let got = expire(&mut g, due);
    assert_eq!(ops(&got), [op::RST]);
    let rst = got[0].0;
    assert_eq!(
        (rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port),
        (2, CID, req.src_port, 5000),
        "the RST names the request's ports"
    );
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert!(all.is_empty(), "EOF without a line, as for a guest RST");
    assert_eq!(g.w.muxer.live(), 0);
    assert_eq!(g.stats.active.load(Ordering::Relaxed), 0);
    assert_eq!(g.stats.connect_timeouts.load(Ordering::Relaxed), 1);
    assert_eq!(g.w.muxer.next_deadline(), None);
}

#[test]
fn a_response_after_expiry_gets_a_reset_and_no_connection() {
    let mut g = Guest::new();
    g.w.muxer.connect_timeout = HOUR;
    g.post_rx(8, RX_LEN);
    let (mut host, req) = g.host_connect(5001);
    let due = g.w.muxer.next_deadline().unwrap();
    assert_eq!(ops(&expire(&mut g, due)), [op::RST]);
    assert!(closed(&mut host));

    // The guest answers late.
    g.send(hdr(op::RESPONSE, 5001, req.src_port, 0), &[]);
    let got = g.recv_n(1);
    assert_eq!(ops(&got), [op::RST]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (req.src_port, 5001));
    // Data on the dead connection gets a RST too.
    g.send(hdr(op::RW, 5001, req.src_port, 2), b"hi");
    assert_eq!(ops(&g.recv_n(1)), [op::RST]);
    assert_eq!(g.w.muxer.live(), 0);
    assert_eq!(g.stats.active.load(Ordering::Relaxed), 0);
    assert_eq!(g.stats.connect_timeouts.load(Ordering::Relaxed), 1);
}

#[test]
fn a_request_that_never_left_the_device_expires_without_a_reset() {
    // No rx buffers: the REQUEST waits in the device.
    let mut g = Guest::new();
    g.w.muxer.connect_timeout = HOUR;
    let mut host = UnixStream::connect(&g.path).unwrap();
    host.write_all(b"CONNECT 5002\n").unwrap();
    g.pump(20);
    assert_eq!(g.w.muxer.live(), 1);
    let due = g.w.muxer.next_deadline().unwrap();
    g.w.muxer.expire(due);
    assert!(closed(&mut host));
    g.post_rx(8, RX_LEN);
    assert!(g.recv().is_empty(), "neither the REQUEST nor a RST");
    assert_eq!(g.stats.connect_timeouts.load(Ordering::Relaxed), 1);
    assert_eq!(g.stats.resets.load(Ordering::Relaxed), 0);
}

#[test]
fn a_client_without_a_connect_line_is_closed_while_another_is_served() {
    let mut g = Guest::new();
    g.w.muxer.connect_timeout = HOUR;
    g.post_rx(8, RX_LEN);
    let before = Instant::now();
    let mut slow = UnixStream::connect(&g.path).unwrap();
    slow.write_all(b"CONNECT 12").unwrap();
    let mut silent = UnixStream::connect(&g.path).unwrap();
    g.pump(20);
    let after = Instant::now();
    let due = g.w.muxer.next_deadline().unwrap();
    assert!(before + LINE_TIMEOUT <= due && due <= after + LINE_TIMEOUT);

    // A third client sends its line and the guest accepts it.
    let (mut good, req) = g.host_connect(6000);
    g.send(hdr(op::RESPONSE, 6000, req.src_port, 0), &[]);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_n(&mut good, ok.len()), ok.as_bytes());
    assert_eq!(g.w.muxer.live(), 3);

    assert!(expire(&mut g, due - NS).is_empty());
    assert!(!closed(&mut slow) && !closed(&mut silent));
    assert!(
        expire(&mut g, due).is_empty(),
        "the guest never heard of them"
    );
    assert!(closed(&mut slow) || closed(&mut silent));
    assert!(expire(&mut g, after + LINE_TIMEOUT).is_empty());
    assert!(closed(&mut slow) && closed(&mut silent));
    assert_eq!(g.stats.line_timeouts.load(Ordering::Relaxed), 2);
    assert_eq!(g.w.muxer.live(), 1);

    // The established connection has no deadline and still bridges.
    assert_eq!(g.w.muxer.next_deadline(), None);
    assert!(expire(&mut g, Instant::now() + 24 * HOUR).is_empty());
    g.send(hdr(op::RW, 6000, req.src_port, 3), b"abc");
    assert_eq!(read_n(&mut good, 3), b"abc");
    good.write_all(b"xyz").unwrap();
    let got = g.recv_n(1);
    assert_eq!((ops(&got), &got[0].1[..]), (vec![op::RW], &b"xyz"[..]));
    assert_eq!(g.stats.connect_timeouts.load(Ordering::Relaxed), 0);
}

#[test]
fn pending_requests_expire_in_order_and_free_the_connection_limit() {
    let mut g = Guest::new();
    g.w.muxer.max_conns = 4;
    g.w.muxer.connect_timeout = HOUR;
    g.post_rx(32, RX_LEN);
    let mut hosts = Vec::new();
    for port in [7000, 7001, 7002, 7003] {
        hosts.push(g.host_connect(port));
    }
    // The limit: a fifth client is closed at once.
    let mut over = UnixStream::connect(&g.path).unwrap();
    g.pump(20);
    assert!(closed(&mut over));

    for k in 0..hosts.len() {
        let due = g.w.muxer.next_deadline().unwrap();
        assert!(expire(&mut g, due - NS).is_empty());
        let got = expire(&mut g, due);
        assert_eq!(ops(&got), [op::RST], "one at a time");
        let (host, req) = &mut hosts[k];
        assert_eq!(got[0].0.src_port, req.src_port, "in deadline order");
        assert!(closed(host));
        for (later, _) in &mut hosts[k + 1..] {
            assert!(!closed(later), "later ones stay");
        }
        assert_eq!(g.w.muxer.live(), hosts.len() - k - 1);
    }
    assert_eq!(g.stats.connect_timeouts.load(Ordering::Relaxed), 4);

    // The slots are free again: a new client is served.
    let (mut host, req) = g.host_connect(7004);
    g.send(hdr(op::RESPONSE, 7004, req.src_port, 0), &[]);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_n(&mut host, ok.len()), ok.as_bytes());
    assert_eq!(g.stats.active.load(Ordering::Relaxed), 1);
}

#[test]
fn the_timer_fires_through_the_event_loop_and_then_stays_quiet() {
    let mut g = Guest::new();
    g.w.muxer.connect_timeout = Duration::from_millis(30);
    g.post_rx(8, RX_LEN);
    let start = Instant::now();
    let (mut host, req) = g.host_connect(8000);
    // Only epoll and the timerfd move time forward here.
    let got = g.recv_n(1);
    assert_eq!(ops(&got), [op::RST]);
    assert_eq!(got[0].0.src_port, req.src_port);
    assert!(start.elapsed() >= Duration::from_millis(30));
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0);
    assert_eq!(g.stats.connect_timeouts.load(Ordering::Relaxed), 1);
    // The timer was consumed: no event spins the worker.
    assert!(g.poller.wait_handler_events(50).unwrap().is_empty());
}
