//! End to end in the nested testbed: Debian's kernel on thinvm with a virtio-net card on a TAP
//! that thinvm creates in the outer machine (`--net tap=NAME,mac=MAC`). The outer machine
//! addresses its side of the TAP, the guest pings it (small and fragmented packets), then the
//! outer machine pings the guest and the guest counts the echo requests it answered. Then 100 MiB
//! of random data go each way over TCP at the same time (busybox nc; checksum, TSO and mergeable
//! rx buffers negotiated), streamed through sha256sum on both ends (nothing stored), and arrive
//! whole with the sha256 they were sent with (16 MiB on the vhost path, to save the emulated
//! machine's time: sha256 of 400 MiB per scenario takes minutes there). Then the guest unbinds its `virtio_net` driver
//! and binds it again (the card is reset and activated anew, as on a driver reload or kexec),
//! addresses the new interface, pings the host and sends 4 MiB more over TCP.
//!
//! The same scenario runs twice in one outer boot: on the userspace data path, then with
//! `vhost=on` (the outer machine loads `vhost` and `vhost_net`), where the outer machine also
//! checks that the kernel's `vhost-<tid>` worker thread of the VMM exists.
//!
//! Takes minutes (an emulated machine boots first): runs only with `THINVM_E2E=1`.

mod e2e_support;

use std::path::PathBuf;
use std::time::Duration;

use e2e_support::{enabled, guest_modules, value};
use testbed::{
    GuestSpec, OuterOptions, OuterSpec, Scenario, Script, Status, Testbed, TestbedConfig,
};

const MAC: &str = "02:54:00:12:34:56";

/// Bytes sent each way on the userspace path, and with vhost-net.
const BULK: u64 = 100 << 20;
const BULK_VHOST: u64 = 16 << 20;

/// `receiver KEY` prints a script for `nc -l -e` that hashes and counts what arrives, into
/// /tmp/KEY.sha and /tmp/KEY.len.
const RECEIVER: &str = r#"receiver() {
    printf '#!/bin/sh\nrm -f /tmp/%s.fifo; mkfifo /tmp/%s.fifo\nwc -c < /tmp/%s.fifo > /tmp/%s.len &\ntee /tmp/%s.fifo | sha256sum | cut -d" " -f1 > /tmp/%s.sha\nwait\n' "$1" "$1" "$1" "$1" "$1" "$1"
}"#;

/// `send KEY HOST PORT` streams $BULK random bytes to HOST:PORT and prints KEY-SENT-SHA.
const SENDER: &str = r#"send() {
    rm -f /tmp/$1.out; mkfifo /tmp/$1.out
    sha256sum < /tmp/$1.out | cut -d' ' -f1 > /tmp/$1.sent &
    h=$!
    head -c "$BULK" /dev/urandom | tee /tmp/$1.out | timeout 500 nc "$2" "$3"
    wait $h
    echo "$1-SENT-SHA=$(cat /tmp/$1.sent)"
}"#;

/// A script with the RECEIVER and SENDER placeholders filled in.
fn with_helpers(script: &str) -> String {
    script
        .replace("RECEIVER", RECEIVER)
        .replace("SENDER", SENDER)
}

/// The guest side: addresses the card, pings the host, waits for the host's pings.
const GUEST_SCRIPT: &str = r#"#!/bin/sh
dev=$(for d in /sys/class/net/*; do [ "$(cat $d/address)" = "02:54:00:12:34:56" ] && basename $d; done)
echo "NET-DEV=$dev"
[ -n "$dev" ] || { ls /sys/class/net; exit 1; }
echo "NET-MAC=$(cat /sys/class/net/$dev/address)"
# The negotiated features, bit 0 first: 15 is mergeable rx buffers.
echo "NET-MRG-RXBUF=$(cut -c16 /sys/class/net/$dev/device/features)"
ip link set "$dev" up
ip addr add 10.213.9.2/24 dev "$dev"
RECEIVER
BULK=$(sed -n 's/.*thinvm.net_bulk=\([0-9]*\).*/\1/p' /proc/cmdline)
receiver H2G > /tmp/recv.sh
chmod +x /tmp/recv.sh
timeout 600 nc -l -p 5002 -e /tmp/recv.sh &
lpid=$!
echo GUEST-NET-UP
i=0
until ping -c 1 -W 1 10.213.9.1 >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -ge 30 ] && break
done
if ping -c 3 -W 2 10.213.9.1 && ping -c 2 -W 2 -s 4000 10.213.9.1; then
    echo "GUEST-PING=ok"
else
    echo "GUEST-PING=fail"
fi
echos() {
    awk '/^Icmp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "InEchos") c = i; h = 1 } else print $c }' /proc/net/snmp
}
SENDER
send G2H 10.213.9.1 5001
wait $lpid
echo "H2G-GOT-SHA=$(cat /tmp/H2G.sha)"
echo "H2G-GOT-LEN=$(cat /tmp/H2G.len)"
i=0
while [ "$(echos)" -lt 3 ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
echo "GUEST-IN-ECHOS=$(echos)"
cat /proc/net/dev
# Unbind and bind the driver: it resets the card (status 0), then negotiates and activates anew.
vdev=$(basename "$(readlink /sys/class/net/$dev/device)")
echo "REBIND-VIRTIO-DEV=$vdev"
echo "$vdev" > /sys/bus/virtio/drivers/virtio_net/unbind
if [ -e "/sys/class/net/$dev" ]; then echo "REBIND-UNBOUND=no"; else echo "REBIND-UNBOUND=yes"; fi
echo "$vdev" > /sys/bus/virtio/drivers/virtio_net/bind
dev=$(for d in /sys/class/net/*; do [ "$(cat $d/address)" = "02:54:00:12:34:56" ] && basename $d; done)
echo "REBIND-NET-DEV=$dev"
ip link set "$dev" up
ip addr add 10.213.9.2/24 dev "$dev"
i=0
until ping -c 1 -W 1 10.213.9.1 >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -ge 30 ] && break
done
if ping -c 3 -W 2 10.213.9.1 && ping -c 2 -W 2 -s 4000 10.213.9.1; then
    echo "REBIND-PING=ok"
else
    echo "REBIND-PING=fail"
fi
dd if=/dev/urandom of=/tmp/rblob bs=1M count=4 2>/dev/null
echo "REBIND-G2H-SENT-SHA=$(sha256sum /tmp/rblob | cut -d' ' -f1)"
timeout 120 nc 10.213.9.1 5003 < /tmp/rblob
"#;

/// The outer side: thinvm in the background, the TAP addressed once thinvm made it, the
/// guest pinged once it says its side is up. `$NET_EXTRA` is appended to the `--net` value.
const OUTER_SCRIPT: &str = r#"
RECEIVER
SENDER
receiver G2H > /tmp/recv.sh
chmod +x /tmp/recv.sh
timeout 700 nc -l -p 5001 -e /tmp/recv.sh &
printf '#!/bin/sh\ncat > /tmp/g2h-rebind\n' > /tmp/recv2.sh
chmod +x /tmp/recv2.sh
timeout 800 nc -l -p 5003 -e /tmp/recv2.sh &
l2=$!
"$THINVM" run --testbed never --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" \
    --memory 256M --net tap=tvnet0,mac=02:54:00:12:34:56$NET_EXTRA \
    --cmdline "console=ttyS0 reboot=k panic=-1 thinvm.test=virtio-net thinvm.net_bulk=$BULK" \
    </dev/null >/tmp/out 2>/tmp/err &
pid=$!
i=0
until ip link show tvnet0 >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -ge 300 ] && break; sleep 0.1
done
ip addr add 10.213.9.1/24 dev tvnet0
ip link set tvnet0 up
i=0
until grep -q GUEST-NET-UP /tmp/out; do
    i=$((i + 1)); [ $i -ge 1200 ] && break; sleep 0.1
done
sleep 1
# vhost-net's kernel workers are named after the VMM thread that became their owner.
vhosts() {
    n=0
    for t in /proc/$pid/task/*; do
        n=$((n + $(grep -lx "vhost-${t##*/}" /proc/[0-9]*/comm 2>/dev/null | wc -l)))
    done
    echo $n
}
vh=no
[ "$(vhosts)" -gt 0 ] && vh=yes
echo "VHOST-THREAD=$vh"
if ping -c 3 -W 2 10.213.9.2; then echo "HOST-PING=ok"; else echo "HOST-PING=fail"; fi
send H2G 10.213.9.2 5002
# After the guest rebound its driver: one vhost worker (the first owner's went with the reset).
i=0
until grep -q REBIND-PING /tmp/out; do
    i=$((i + 1)); [ $i -ge 1800 ] && break; sleep 0.1
done
echo "REBIND-VHOST-THREADS=$(vhosts)"
wait $pid
rc=$?
i=0
while kill -0 $l2 2>/dev/null && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
kill $l2 2>/dev/null
ip link del tvnet0 2>/dev/null
cat /tmp/out
echo "G2H-GOT-SHA=$(cat /tmp/G2H.sha)"
echo "G2H-GOT-LEN=$(cat /tmp/G2H.len)"
echo "REBIND-G2H-GOT-SHA=$(sha256sum /tmp/g2h-rebind 2>/dev/null | cut -d' ' -f1)"
sed 's/^/STDERR: /' /tmp/err
echo "VMM-RC=$rc"
exit $rc
"#;

#[test]
fn virtio_net_pings_both_ways_in_the_testbed() {
    if !enabled() {
        return;
    }
    let mut tests = testbed::images::builtin_guest_tests();
    tests.push(Script::new("virtio-net", &with_helpers(GUEST_SCRIPT)));
    let mut outer_modules = OuterSpec::default().modules;
    outer_modules.extend(["tun", "vhost", "vhost_net"].map(String::from));
    let config = TestbedConfig {
        guest: GuestSpec {
            modules: guest_modules(&["failover", "net_failover", "virtio_net"]),
            tests,
            ..GuestSpec::default()
        },
        outer: OuterSpec {
            modules: outer_modules,
            thinvm: Some(PathBuf::from(env!("CARGO_BIN_EXE_thinvm"))),
            ..OuterSpec::default()
        },
        ..TestbedConfig::default()
    };
    let tb = Testbed::new(&config).expect("testbed");
    let opts = OuterOptions {
        echo: std::env::var_os("THINVM_E2E_ECHO").is_some(),
        ..OuterOptions::default()
    };
    let scenarios = [
        ("virtio-net-ping", "", BULK),
        ("virtio-net-vhost", ",vhost=on", BULK_VHOST),
    ]
    .map(|(name, extra, bulk)| Scenario {
        name: name.into(),
        script: format!(
            "NET_EXTRA='{extra}'\nBULK={bulk}\n{}",
            with_helpers(OUTER_SCRIPT)
        ),
        timeout: Duration::from_secs(900),
    });
    let results = tb.run(&opts, &scenarios).expect("outer run");
    assert_eq!(results.len(), 2);
    for (r, (vhost, bulk)) in results.iter().zip([("no", BULK), ("yes", BULK_VHOST)]) {
        check(r, vhost, bulk);
    }
}

/// The figures of one scenario; `vhost` is whether the VMM must have a vhost worker, `bulk`
/// the bytes sent each way.
fn check(r: &testbed::ScenarioResult, vhost: &str, bulk: u64) {
    let log = &r.log;
    let ctx = format!("{} (console {}):\n{log}", r.name, r.console_log.display());
    assert_eq!(r.status, Status::Passed, "{ctx}");
    assert_eq!(value(log, "VMM-RC"), Some("0"), "{ctx}");
    assert_eq!(value(log, "NET-MAC"), Some(MAC), "{ctx}");
    assert_eq!(value(log, "NET-MRG-RXBUF"), Some("1"), "{ctx}");
    assert_eq!(value(log, "GUEST-PING"), Some("ok"), "{ctx}");
    assert_eq!(value(log, "VHOST-THREAD"), Some(vhost), "{ctx}");
    assert_eq!(value(log, "HOST-PING"), Some("ok"), "{ctx}");
    let echos: u32 = value(log, "GUEST-IN-ECHOS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        echos >= 3,
        "the guest answered {echos} echo requests: {ctx}"
    );
    // The driver unbound (the interface went away) and bound again: the card was reset and
    // activated anew, on the same data path (one vhost worker, the first owner's gone).
    assert_eq!(value(log, "REBIND-UNBOUND"), Some("yes"), "{ctx}");
    assert!(
        value(log, "REBIND-NET-DEV").is_some_and(|d| !d.is_empty()),
        "no interface after the rebind: {ctx}"
    );
    assert_eq!(value(log, "REBIND-PING"), Some("ok"), "{ctx}");
    let workers = if vhost == "yes" { "1" } else { "0" };
    assert_eq!(value(log, "REBIND-VHOST-THREADS"), Some(workers), "{ctx}");
    assert!(
        !log.contains("activation refused"),
        "the VMM refused an activation: {ctx}"
    );
    let bulk = bulk.to_string();
    for key in ["G2H-GOT-LEN", "H2G-GOT-LEN"] {
        assert_eq!(value(log, key), Some(bulk.as_str()), "{key}: {ctx}");
    }
    for (key, got) in [
        ("G2H-SENT-SHA", "G2H-GOT-SHA"),
        ("H2G-SENT-SHA", "H2G-GOT-SHA"),
        ("REBIND-G2H-SENT-SHA", "REBIND-G2H-GOT-SHA"),
    ] {
        let sent = value(log, key).filter(|v| v.len() == 64);
        assert!(sent.is_some(), "no {key} digest: {ctx}");
        assert_eq!(value(log, got), sent, "{got}: {ctx}");
    }
    assert_eq!(value(log, "THINVM-TEST-RC"), Some("0"), "{ctx}");
}
