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
"#;

/// The outer side: the listener for the guest's port 6000, thinvm, then the CONNECTs.
const OUTER_SCRIPT: &str = r#"
S=/tmp/vsock.sock
timeout 300 socat -u UNIX-LISTEN:${S}_6000 CREATE:/tmp/g2h &
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
wait $pid
rc=$?
cat /tmp/out
echo "G2H-GOT-SHA=$(sha256sum /tmp/g2h | cut -d' ' -f1)"
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
    for (key, got) in [
        ("G2H-SENT-SHA", "G2H-GOT-SHA"),
        ("H2G-SENT-SHA", "H2G-GOT-SHA"),
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
