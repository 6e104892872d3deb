//! The TAP backend against the host kernel: a TAP moved into a network namespace the test makes,
//! an ARP request written through the backend and the kernel's ARP reply read back.
//! Needs root and /dev/net/tun; skips with a message when either is missing.

use std::process::Command;
use std::time::{Duration, Instant};

use vm_memory::VolatileSlice;

use devices::virtio::net::{NetBackend, Tap, F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, HDR_LEN};

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes the namespace (and the TAP inside it) on drop.
struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

const GUEST_MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
const HOST_IP: [u8; 4] = [10, 213, 7, 1];
const GUEST_IP: [u8; 4] = [10, 213, 7, 2];

/// A zero vnet header and an ARP request "who has HOST_IP, tell GUEST_IP".
fn arp_request() -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&HOST_IP);
    f
}

fn is_arp_reply(frame: &[u8]) -> bool {
    let Some(eth) = frame.get(HDR_LEN..) else {
        return false;
    };
    eth.len() >= 42
        && eth[0..6] == GUEST_MAC
        && eth[12..14] == [0x08, 0x06]
        && eth[20..22] == [0, 2]
        && eth[28..32] == HOST_IP
        && eth[38..42] == GUEST_IP
}

/// Writes the ARP request from buffers of the lengths `parts` (the last one takes the rest).
fn request(tap: &mut Tap, parts: &[usize]) {
    let mut req = arp_request();
    let mut rest = &mut req[..];
    let mut bufs = Vec::new();
    for (i, &n) in parts.iter().enumerate() {
        let n = if i + 1 == parts.len() {
            rest.len()
        } else {
            n.min(rest.len())
        };
        let (a, b) = std::mem::take(&mut rest).split_at_mut(n);
        bufs.push(VolatileSlice::from(a));
        rest = b;
    }
    tap.write_frame(&bufs).unwrap();
}

/// Sends the request (from `send` parts) every 500 ms until an ARP reply is read into buffers of
/// the lengths `recv`; returns the reply, or None after 10 s.
fn exchange(tap: &mut Tap, send: &[usize], recv: &[usize]) -> Option<Vec<u8>> {
    let mut bufs: Vec<Vec<u8>> = recv.iter().map(|&n| vec![0u8; n]).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last_send = None::<Instant>;
    while Instant::now() < deadline {
        if last_send.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
            request(tap, send);
            last_send = Some(Instant::now());
        }
        let slices: Vec<VolatileSlice<'_>> = bufs
            .iter_mut()
            .map(|b| VolatileSlice::from(&mut b[..]))
            .collect();
        match tap.read_frame(&slices) {
            Ok(n) => {
                let frame: Vec<u8> = bufs.concat().into_iter().take(n).collect();
                if is_arp_reply(&frame) {
                    return Some(frame);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("reading the TAP: {e}"),
        }
    }
    None
}

#[test]
fn tap_in_a_namespace_answers_arp() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !std::path::Path::new("/dev/net/tun").exists() || !root {
        eprintln!("SKIPPED tap_in_a_namespace_answers_arp: needs root and /dev/net/tun");
        return;
    }
    let pid = std::process::id();
    let ns = Netns(format!("thinvm-tap-{pid}"));
    let name = format!("tvt{}", pid % 100_000);
    ip(&["netns", "add", &ns.0]).unwrap();
    let mut tap = Tap::open(&name).unwrap();
    assert_eq!(tap.name(), name);
    tap.set_offload(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6)
        .unwrap();
    ip(&["link", "set", &name, "netns", &ns.0]).unwrap();
    let in_ns = |args: &[&str]| {
        let mut a = vec!["netns", "exec", &ns.0, "ip"];
        a.extend_from_slice(args);
        ip(&a)
    };
    in_ns(&["addr", "add", "10.213.7.1/24", "dev", &name]).unwrap();
    in_ns(&["link", "set", &name, "up"]).unwrap();

    // The link may take a moment to come up: the request is repeated until the reply comes.
    let reply = exchange(&mut tap, &[HDR_LEN + 42], &[65562]);
    assert!(
        reply.is_some(),
        "no ARP reply from the namespace through {name}"
    );
    // Request and reply split across buffers, the vnet header too (readv / writev).
    let reply = exchange(&mut tap, &[5, 7, 10, 32], &[7, 5, 30, 65562]);
    assert!(reply.is_some(), "no ARP reply through split buffers");
    // A frame longer than the buffers is cut without an error, the read counting only what
    // fit: the device reads into guest memory only chains that hold the largest frame.
    request(&mut tap, &[HDR_LEN + 42]);
    let mut small = [0u8; 20];
    let deadline = Instant::now() + Duration::from_secs(10);
    let n = loop {
        match tap.read_frame(&[VolatileSlice::from(&mut small[..])]) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no frame to cut");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reading {name}: {e}"),
        }
    };
    assert!(n <= small.len(), "read {n} bytes into {}", small.len());
    let stats = in_ns(&["-s", "link", "show", &name]).unwrap();
    assert!(stats.contains("RX:"), "{stats}");
}

#[test]
fn an_existing_non_tap_name_fails_cleanly() {
    // SAFETY: geteuid has no preconditions.
    if !std::path::Path::new("/dev/net/tun").exists() || unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED an_existing_non_tap_name_fails_cleanly: needs root and /dev/net/tun");
        return;
    }
    // "lo" exists and is not a TAP: TUNSETIFF refuses it.
    let err = Tap::open("lo").unwrap_err();
    assert!(err.to_string().contains("TUNSETIFF"), "{err}");
}
