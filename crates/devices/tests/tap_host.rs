//! The TAP backend against the host kernel: a TAP moved into a network namespace the test makes,
//! an ARP request written through the backend and the kernel's ARP reply read back.
//! Needs root and /dev/net/tun; skips with a message when either is missing.

use std::process::Command;
use std::time::{Duration, Instant};

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

    let mut buf = vec![0u8; 65562];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = false;
    let mut last_send = None::<Instant>;
    while !answered && Instant::now() < deadline {
        // The link may take a moment to come up: repeat the request now and then.
        if last_send.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
            tap.write_frame(&arp_request()).unwrap();
            last_send = Some(Instant::now());
        }
        match tap.read_frame(&mut buf) {
            Ok(n) => answered = is_arp_reply(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("reading {name}: {e}"),
        }
    }
    assert!(answered, "no ARP reply from the namespace through {name}");
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
