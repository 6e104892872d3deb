//! End to end in the nested testbed: Debian's kernel on thinvm with a virtio-vsock device
//! (`--vsock cid=3,socket=PATH`) and Debian's socat on both sides (busybox has no AF_VSOCK).
//!
//! - Host to guest: the guest listens with `socat VSOCK-LISTEN:5000`; the outer machine
//!   connects to the VMM's socket, writes `CONNECT 5000\n` followed by 16 MiB of random data,
//!   and reads `OK <port>\n`; the guest's copy has the same sha256.
//! - Guest to host: the outer machine listens on `PATH_6000`; the guest sends 16 MiB with
//!   `socat VSOCK-CONNECT:2:6000`; the outer machine's copy has the same sha256.
//! - Refusals: `CONNECT 5999` (nothing listens in the guest) is closed without `OK`, and a guest
//!   connection to host port 6999 (no `PATH_6999`) is reset.
//! - Rebind: with a host connection to guest port 5001 and a guest connection to `PATH_6001`
//!   open, the guest unbinds `vmw_vsock_virtio_transport` (the device is reset: both host
//!   sockets must read EOF, each socat ending by itself within 5 s) and binds it again; then
//!   1 MiB goes each way (`CONNECT 5002`, `PATH_6002`) with matching sha256.
//!
//! Takes minutes (an emulated machine boots first): runs only with `THINVM_E2E=1`.

mod e2e_support;

use std::path::PathBuf;
use std::time::Duration;

use e2e_support::{enabled, guest_modules, value};
use testbed::{
    GuestSpec, OuterOptions, OuterSpec, Scenario, Script, Status, Testbed, TestbedConfig,
};

const SOCAT: &str = "/usr/bin/socat";

/// The guest side: a listener on port 5000, then 16 MiB to the host's port 6000.
const GUEST_SCRIPT: &str = r#"#!/bin/sh
echo "VSOCK-DEV=$(ls /dev/vsock) $(cat /sys/bus/virtio/devices/*/device | tr '\n' ' ')"
timeout 240 socat -u VSOCK-LISTEN:5000 CREATE:/tmp/h2g &
lpid=$!
sleep 1
echo GUEST-VSOCK-UP
if timeout 30 socat -u OPEN:/dev/null VSOCK-CONNECT:2:6999 2>/tmp/refused; then
    echo "GUEST-REFUSED=connected"
else
    echo "GUEST-REFUSED=ok $(cat /tmp/refused | tail -1)"
fi
dd if=/dev/urandom of=/tmp/gblob bs=1M count=16 2>/dev/null
echo "G2H-SENT-SHA=$(sha256sum /tmp/gblob | cut -d' ' -f1)"
start=$(date +%s)
timeout 240 socat -u OPEN:/tmp/gblob VSOCK-CONNECT:2:6000
echo "G2H-RC=$? secs=$(($(date +%s) - start))"
wait $lpid
echo "H2G-GOT-SHA=$(sha256sum /tmp/h2g | cut -d' ' -f1)"
# Two connections held open across an unbind: the host's to guest port 5001, the guest's to
# host port 6001.
timeout 120 socat -u VSOCK-LISTEN:5001 CREATE:/tmp/held &
hl=$!
sleep 0.5
echo REBIND-HELD-LISTEN
(echo HELD-G2H; exec sleep 120) | timeout 120 socat -u - VSOCK-CONNECT:2:6001 &
i=0
until grep -q HELD-H2G /tmp/held 2>/dev/null || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "REBIND-HELD-H2G=$(cat /tmp/held 2>/dev/null)"
sleep 1
# Unbind and bind the driver: it resets its sockets and the device (status 0), then reads the
# CID and activates the device anew.
vdev=
for d in /sys/bus/virtio/devices/*; do
    [ "$(cat $d/device)" = 0x0013 ] && vdev=$(basename $d)
done
drv=$(basename "$(readlink /sys/bus/virtio/devices/$vdev/driver)")
echo "REBIND-VSOCK-DRIVER=$drv"
echo "$vdev" > /sys/bus/virtio/drivers/$drv/unbind
[ -e /sys/bus/virtio/drivers/$drv/$vdev ] && echo "REBIND-VSOCK-UNBOUND=no" || echo "REBIND-VSOCK-UNBOUND=yes"
i=0
while kill -0 $hl 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
kill -0 $hl 2>/dev/null && echo "REBIND-GUEST-HELD=open" || echo "REBIND-GUEST-HELD=reset"
echo "$vdev" > /sys/bus/virtio/drivers/$drv/bind
[ -e /sys/bus/virtio/drivers/$drv/$vdev ] && echo "REBIND-VSOCK-BOUND=yes" || echo "REBIND-VSOCK-BOUND=no"
timeout 120 socat -u VSOCK-LISTEN:5002 CREATE:/tmp/h2g2 &
lpid=$!
sleep 0.5
echo REBIND-VSOCK-UP
dd if=/dev/urandom of=/tmp/gblob2 bs=1M count=1 2>/dev/null
echo "REBIND-G2H-SENT-SHA=$(sha256sum /tmp/gblob2 | cut -d' ' -f1)"
timeout 60 socat -u OPEN:/tmp/gblob2 VSOCK-CONNECT:2:6002
echo "REBIND-G2H-RC=$?"
wait $lpid
echo "REBIND-H2G-GOT-SHA=$(sha256sum /tmp/h2g2 | cut -d' ' -f1)"
"#;

/// The outer side: the listener for the guest's port 6000, thinvm, then the CONNECTs.
const OUTER_SCRIPT: &str = r#"
S=/tmp/vsock.sock
timeout 300 socat -u UNIX-LISTEN:${S}_6000 CREATE:/tmp/g2h &
timeout 400 socat -u UNIX-LISTEN:${S}_6001 CREATE:/tmp/held2 &
c2=$!
timeout 400 socat -u UNIX-LISTEN:${S}_6002 CREATE:/tmp/g2h2 &
"$THINVM" run --testbed never --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" \
    --memory 256M --vsock cid=3,socket=$S \
    --cmdline 'console=ttyS0 reboot=k panic=-1 thinvm.test=vsock' </dev/null >/tmp/out 2>/tmp/err &
pid=$!
i=0
until grep -q GUEST-VSOCK-UP /tmp/out; do
    i=$((i + 1)); [ $i -ge 1200 ] && break; sleep 0.1
done
printf 'CONNECT 5999\n' | timeout 30 socat -t 5 - UNIX-CONNECT:$S > /tmp/refused
echo "HOST-REFUSED=$(wc -c < /tmp/refused) bytes"
dd if=/dev/urandom of=/tmp/hblob bs=1M count=16 2>/dev/null
echo "H2G-SENT-SHA=$(sha256sum /tmp/hblob | cut -d' ' -f1)"
start=$(date +%s)
(printf 'CONNECT 5000\n'; cat /tmp/hblob) | timeout 240 socat -t 10 - UNIX-CONNECT:$S > /tmp/reply
echo "H2G-RC=$? secs=$(($(date +%s) - start))"
echo "HOST-REPLY=$(head -1 /tmp/reply)"
wait_for() { # marker, tenths of a second
    i=0
    until grep -q "$1" /tmp/out; do
        i=$((i + 1)); [ $i -ge "$2" ] && return 1
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
}
# A connection to guest port 5001 kept open (its stdin stays open) until the guest unbinds.
wait_for REBIND-HELD-LISTEN 600 || echo "NO-REBIND-HELD-LISTEN"
mkfifo /tmp/h1
(printf 'CONNECT 5001\nHELD-H2G\n'; exec sleep 120) > /tmp/h1 &
w1=$!
timeout 200 socat -t 1 - UNIX-CONNECT:$S < /tmp/h1 > /tmp/held1 &
c1=$!
wait_for REBIND-VSOCK-UNBOUND 600 || echo "NO-REBIND-VSOCK-UNBOUND"
# The device's reset closes both held connections: each socat reads EOF and ends by itself.
i=0
while { kill -0 $c1 || kill -0 $c2; } 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
for c in "H2G $c1" "G2H $c2"; do
    set -- $c
    if kill -0 $2 2>/dev/null; then
        echo "HELD-$1-CLOSED=no"
        kill $2
    else
        wait $2
        echo "HELD-$1-CLOSED=yes rc=$?"
    fi
done
echo "HELD-H2G-CLOSED-MS=$((i * 100))"
kill $w1 2>/dev/null
echo "HELD-H2G-REPLY=$(head -1 /tmp/held1)"
echo "HELD-G2H-GOT=$(cat /tmp/held2)"
# After the bind: both directions again, 1 MiB each.
wait_for REBIND-VSOCK-UP 600 || echo "NO-REBIND-VSOCK-UP"
dd if=/dev/urandom of=/tmp/hblob2 bs=1M count=1 2>/dev/null
echo "REBIND-H2G-SENT-SHA=$(sha256sum /tmp/hblob2 | cut -d' ' -f1)"
(printf 'CONNECT 5002\n'; cat /tmp/hblob2) | timeout 60 socat -t 10 - UNIX-CONNECT:$S > /tmp/reply2
echo "REBIND-HOST-REPLY=$(head -1 /tmp/reply2)"
wait $pid
rc=$?
cat /tmp/out
echo "G2H-GOT-SHA=$(sha256sum /tmp/g2h | cut -d' ' -f1)"
echo "REBIND-G2H-GOT-SHA=$(sha256sum /tmp/g2h2 | cut -d' ' -f1)"
sed 's/^/STDERR: /' /tmp/err
echo "VMM-RC=$rc"
[ -e $S ] && echo "SOCKET-LEFT=yes" || echo "SOCKET-LEFT=no"
exit $rc
"#;

#[test]
fn virtio_vsock_bridges_unix_sockets_both_ways_in_the_testbed() {
    if !enabled() {
        return;
    }
    assert!(
        std::path::Path::new(SOCAT).is_file(),
        "{SOCAT} is missing: scripts/deps.sh installs socat"
    );
    let mut tests = testbed::images::builtin_guest_tests();
    tests.push(Script::new("vsock", GUEST_SCRIPT));
    let config = TestbedConfig {
        guest: GuestSpec {
            modules: guest_modules(&[
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
            ]),
            tests,
            binaries: vec![PathBuf::from(SOCAT)],
        },
        outer: OuterSpec {
            thinvm: Some(PathBuf::from(env!("CARGO_BIN_EXE_thinvm"))),
            extra_binaries: vec![PathBuf::from(SOCAT)],
            ..OuterSpec::default()
        },
        ..TestbedConfig::default()
    };
    let tb = Testbed::new(&config).expect("testbed");
    let opts = OuterOptions {
        echo: std::env::var_os("THINVM_E2E_ECHO").is_some(),
        ..OuterOptions::default()
    };
    let scenarios = [Scenario {
        name: "virtio-vsock".into(),
        script: OUTER_SCRIPT.into(),
        timeout: Duration::from_secs(600),
    }];
    let results = tb.run(&opts, &scenarios).expect("outer run");
    let r = &results[0];
    let log = &r.log;
    let ctx = format!("{} (console {}):\n{log}", r.name, r.console_log.display());
    assert_eq!(r.status, Status::Passed, "{ctx}");
    assert_eq!(value(log, "VMM-RC"), Some("0"), "{ctx}");
    let reply = value(log, "HOST-REPLY").unwrap_or_default();
    let port: Option<u32> = reply.strip_prefix("OK ").and_then(|p| p.parse().ok());
    assert!(
        port.is_some(),
        "the host got `OK <port>`, not {reply:?}: {ctx}"
    );
    assert_eq!(value(log, "HOST-REFUSED"), Some("0 bytes"), "{ctx}");
    let refused = value(log, "GUEST-REFUSED").unwrap_or_default();
    assert!(refused.starts_with("ok"), "{refused}: {ctx}");
    // The driver unbound with a connection open each way: the reset closed both host sockets
    // (each socat read EOF and ended by itself); bound again, both directions work.
    assert_eq!(
        value(log, "REBIND-VSOCK-DRIVER"),
        Some("vmw_vsock_virtio_transport"),
        "{ctx}"
    );
    assert_eq!(value(log, "REBIND-HELD-H2G"), Some("HELD-H2G"), "{ctx}");
    assert_eq!(value(log, "HELD-G2H-GOT"), Some("HELD-G2H"), "{ctx}");
    let held = value(log, "HELD-H2G-REPLY").unwrap_or_default();
    assert!(held.starts_with("OK "), "held connection: {held:?}: {ctx}");
    assert_eq!(value(log, "REBIND-VSOCK-UNBOUND"), Some("yes"), "{ctx}");
    assert_eq!(value(log, "HELD-H2G-CLOSED"), Some("yes rc=0"), "{ctx}");
    assert_eq!(value(log, "HELD-G2H-CLOSED"), Some("yes rc=0"), "{ctx}");
    assert_eq!(value(log, "REBIND-VSOCK-BOUND"), Some("yes"), "{ctx}");
    let reply = value(log, "REBIND-HOST-REPLY").unwrap_or_default();
    assert!(
        reply
            .strip_prefix("OK ")
            .is_some_and(|p| p.parse::<u32>().is_ok()),
        "after the rebind the host got {reply:?}: {ctx}"
    );
    assert_eq!(value(log, "REBIND-G2H-RC"), Some("0"), "{ctx}");
    assert!(
        !log.contains("activation refused"),
        "the VMM refused an activation: {ctx}"
    );
    for (key, got) in [
        ("G2H-SENT-SHA", "G2H-GOT-SHA"),
        ("H2G-SENT-SHA", "H2G-GOT-SHA"),
        ("REBIND-G2H-SENT-SHA", "REBIND-G2H-GOT-SHA"),
        ("REBIND-H2G-SENT-SHA", "REBIND-H2G-GOT-SHA"),
    ] {
        let sent = value(log, key).filter(|v| v.len() == 64);
        assert!(sent.is_some(), "no {key} digest: {ctx}");
        assert_eq!(value(log, got), sent, "{got}: {ctx}");
    }
    assert_eq!(value(log, "SOCKET-LEFT"), Some("no"), "{ctx}");
    assert_eq!(value(log, "THINVM-TEST-RC"), Some("0"), "{ctx}");
    eprintln!(
        "vsock 16 MiB: host->guest {}, guest->host {}",
        value(log, "H2G-RC").unwrap_or("?"),
        value(log, "G2H-RC").unwrap_or("?")
    );
}
