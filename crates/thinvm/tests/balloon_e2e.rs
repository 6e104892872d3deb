//! End to end in the nested testbed: Debian's kernel on thinvm with a virtio-balloon, the VMM's
//! memory measured from the outer machine (VmRSS of the thinvm process, whose pid and command
//! name are printed beside every reading).
//!
//! 1. Inflate: a 256 MiB guest touches up to 200 MiB (a tmpfs file, then deleted; in practice
//!    about 180 MiB, what its MemAvailable allows with 16 MiB to spare), the outer machine
//!    reads the VMM's RSS, asks for a 128 MiB balloon with a raw `PUT /api/v1/vm.resize` sent
//!    by socat to `--api-socket`, and reads the RSS again once the guest saw its memory shrink:
//!    it must have fallen by at least 100 MiB. Free page reporting is off in this phase, so only
//!    the balloon can give memory back.
//!    Then the guest unbinds `virtio_balloon` with the balloon inflated (the driver deflates it
//!    all, then resets the device: MemTotal is whole again) and binds it again: the driver
//!    inflates to the target it reads (128 MiB), a resize to 160 MiB lowers MemTotal further,
//!    and the statistics (`guest_total_memory` in `vm.counters`) show the smaller guest, so the
//!    new stats queue delivers.
//! 2. Free page reporting: a second VM with a bare `--balloon` (reporting on) fills 150 MiB,
//!    frees it, and the VMM's RSS must fall by at least 75 MiB within 30 s (the guest reports
//!    2 MiB+ blocks about 2 s after they became free).
//!
//! Takes minutes (an emulated machine boots first): runs only with `THINVM_E2E=1`.

mod e2e_support;

use std::path::PathBuf;
use std::time::Duration;

use e2e_support::{enabled, guest_modules, value};
use testbed::{
    GuestSpec, OuterOptions, OuterSpec, Scenario, Script, Status, Testbed, TestbedConfig,
};

/// Guest, phase 1: touch 200 MiB, free it, then wait for the balloon to take 128 MiB.
const GUEST_INFLATE: &str = r#"#!/bin/sh
memtotal() { awk '/^MemTotal:/ { print $2 }' /proc/meminfo; }
ls -d /sys/bus/virtio/drivers/virtio_balloon/virtio* >/dev/null 2>&1 && echo "GUEST-BALLOON=bound"
mkdir -p /fill
mount -t tmpfs -o size=240m tmpfs /fill
# 200 MiB, or what the guest can hold with 16 MiB to spare (an OOM would panic the guest).
avail=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
n=$((avail - 16)); [ $n -gt 200 ] && n=200
echo "GUEST-AVAILABLE-MIB=$avail GUEST-FILL-MIB=$n"
dd if=/dev/zero of=/fill/blob bs=1M count=$n 2>/dev/null
echo "GUEST-FILLED-KIB=$(du -k /fill/blob | cut -f1)"
rm -f /fill/blob
before=$(memtotal)
echo "GUEST-MEMTOTAL-BEFORE=$before"
echo GUEST-FILLED
i=0
while [ $((before - $(memtotal))) -lt 125000 ] && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
echo "GUEST-MEMTOTAL-AFTER=$(memtotal)"
echo GUEST-INFLATED
# The outer machine reads the VMM's RSS meanwhile.
sleep 10
# Unbind with the balloon inflated: the driver deflates it all, then resets the device. Bound
# again, it inflates to the target it reads (128 MiB), then to what the outer machine asks.
vdev=$(basename "$(ls -d /sys/bus/virtio/drivers/virtio_balloon/virtio* | head -n 1)")
echo "$vdev" > /sys/bus/virtio/drivers/virtio_balloon/unbind
[ -e /sys/bus/virtio/drivers/virtio_balloon/$vdev ] && echo "REBIND-BALLOON-UNBOUND=no" || echo "REBIND-BALLOON-UNBOUND=yes"
echo "REBIND-MEMTOTAL-UNBOUND=$(memtotal)"
echo "$vdev" > /sys/bus/virtio/drivers/virtio_balloon/bind
[ -e /sys/bus/virtio/drivers/virtio_balloon/$vdev ] && echo "REBIND-BALLOON-BOUND=yes" || echo "REBIND-BALLOON-BOUND=no"
i=0
while [ $((before - $(memtotal))) -lt 125000 ] && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
echo "REBIND-MEMTOTAL-REINFLATED=$(memtotal)"
echo REBIND-REINFLATED
i=0
while [ $((before - $(memtotal))) -lt 158000 ] && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
echo "REBIND-MEMTOTAL-INFLATED=$(memtotal)"
echo REBIND-INFLATED
# The outer machine reads fresh statistics meanwhile.
sleep 20
"#;

/// Guest, phase 2: touch 150 MiB, hold it while the outer machine measures, free it.
const GUEST_REPORT: &str = r#"#!/bin/sh
mkdir -p /fill
mount -t tmpfs -o size=200m tmpfs /fill
dd if=/dev/zero of=/fill/blob bs=1M count=150 2>/dev/null
echo "GUEST-FILLED-KIB=$(du -k /fill/blob | cut -f1)"
echo GUEST-FILLED
sleep 6
rm -f /fill/blob
echo GUEST-FREED
sleep 40
"#;

/// Shared shell functions of the outer scenarios.
const OUTER_LIB: &str = r#"
wait_for() { # marker, tenths of a second; fails at once when the VMM has ended
    i=0
    until grep -q "$1" /tmp/out; do
        i=$((i + 1)); [ $i -ge "$2" ] && return 1
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
}
finish() {
    wait $pid
    rc=$?
    cat /tmp/out
    sed 's/^/STDERR: /' /tmp/err
    echo "VMM-RC=$rc"
    exit $rc
}
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"; }
api() { # method path body
    body=$3
    (printf '%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
        "$1" "$2" "${#body}" "$body"; sleep 3) | socat -t 5 - UNIX-CONNECT:/tmp/api.sock
}
"#;

const OUTER_INFLATE: &str = r#"
"$THINVM" run --testbed never --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" \
    --memory 256M --balloon free_page_reporting=off,deflate_on_oom=off --api-socket /tmp/api.sock \
    --cmdline 'console=ttyS0 reboot=k panic=-1 thinvm.test=balloon-inflate' </dev/null >/tmp/out 2>/tmp/err &
pid=$!
echo "VMM-PID=$pid VMM-COMM=$(cat /proc/$pid/comm)"
wait_for GUEST-FILLED 3000 || { echo "NO-GUEST-FILLED"; kill $pid; finish; }
sleep 1
filled=$(rss)
echo "RSS-FILLED-KIB=$filled (pid $pid, $(cat /proc/$pid/comm))"
api PUT /api/v1/vm.resize '{"desired_balloon":134217728}' | head -1 | sed 's/^/RESIZE-STATUS: /'
wait_for GUEST-INFLATED 2400 || echo "NO-GUEST-INFLATED"
sleep 2
inflated=$(rss)
echo "RSS-INFLATED-KIB=$inflated (pid $pid, $(cat /proc/$pid/comm))"
api GET /api/v1/vm.counters '' | tail -1 | sed 's/^/COUNTERS: /'
echo
# The guest rebinds its driver, which inflates to the target again; then 160 MiB through the
# API, and statistics that show the smaller guest must come through the new stats queue.
wait_for REBIND-REINFLATED 1200 || echo "NO-REBIND-REINFLATED"
api PUT /api/v1/vm.resize '{"desired_balloon":167772160}' | head -1 | sed 's/^/REBIND-RESIZE-STATUS: /'
wait_for REBIND-INFLATED 1200 || echo "NO-REBIND-INFLATED"
total=$(sed -n 's/^REBIND-MEMTOTAL-INFLATED=//p' /tmp/out | tr -d '\r')
fresh=no
for t in 1 2 3 4 5; do
    c=$(api GET /api/v1/vm.counters '' | tail -1)
    got=$(echo "$c" | sed -n 's/.*"guest_total_memory":\([0-9]*\).*/\1/p')
    if [ -n "$got" ] && [ -n "$total" ] && [ "$got" -le $(((total + 1024) * 1024)) ]; then
        fresh=yes; break
    fi
done
echo "REBIND-COUNTERS: $c"
echo "REBIND-STATS-FRESH=$fresh after $t reads (guest_total_memory $got, MemTotal $total KiB)"
finish
"#;

const OUTER_REPORT: &str = r#"
"$THINVM" run --testbed never --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" \
    --memory 256M --balloon --api-socket /tmp/api.sock \
    --cmdline 'console=ttyS0 reboot=k panic=-1 thinvm.test=balloon-report' </dev/null >/tmp/out 2>/tmp/err &
pid=$!
echo "VMM-PID=$pid VMM-COMM=$(cat /proc/$pid/comm)"
wait_for GUEST-FILLED 3000 || { echo "NO-GUEST-FILLED"; kill $pid; finish; }
sleep 1
filled=$(rss)
echo "RSS-FILLED-KIB=$filled (pid $pid, $(cat /proc/$pid/comm))"
wait_for GUEST-FREED 600 || echo "NO-GUEST-FREED"
i=0
now=$(rss)
while [ $((filled - now)) -lt 102400 ] && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); now=$(rss); done
echo "RSS-REPORTED-KIB=$now after ${i}s (pid $pid, $(cat /proc/$pid/comm))"
api GET /api/v1/vm.counters '' | tail -1 | sed 's/^/COUNTERS: /'
echo
finish
"#;

/// The number at the start of `key`'s value (readings are followed by the pid).
fn kib(log: &str, key: &str) -> u64 {
    value(log, key)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn balloon_inflate_and_free_page_reporting_lower_the_vmm_rss() {
    if !enabled() {
        return;
    }
    let mut tests = testbed::images::builtin_guest_tests();
    tests.push(Script::new("balloon-inflate", GUEST_INFLATE));
    tests.push(Script::new("balloon-report", GUEST_REPORT));
    let config = TestbedConfig {
        guest: GuestSpec {
            modules: guest_modules(&["virtio_balloon"]),
            tests,
            ..GuestSpec::default()
        },
        outer: OuterSpec {
            thinvm: Some(PathBuf::from(env!("CARGO_BIN_EXE_thinvm"))),
            extra_binaries: vec![PathBuf::from("/usr/bin/socat")],
            ..OuterSpec::default()
        },
        ..TestbedConfig::default()
    };
    let tb = Testbed::new(&config).expect("testbed");
    let opts = OuterOptions {
        echo: std::env::var_os("THINVM_E2E_ECHO").is_some(),
        ..OuterOptions::default()
    };
    let scenario = |name: &str, body: &str| Scenario {
        name: name.into(),
        script: format!("{OUTER_LIB}{body}"),
        timeout: Duration::from_secs(400),
    };
    let scenarios = [
        scenario("balloon-inflate", OUTER_INFLATE),
        scenario("balloon-report", OUTER_REPORT),
    ];
    let results = tb.run(&opts, &scenarios).expect("outer run");
    let mib = 1024;

    let r = &results[0];
    let log = &r.log;
    let ctx = format!("{} (console {}):\n{log}", r.name, r.console_log.display());
    assert_eq!(r.status, Status::Passed, "{ctx}");
    assert_eq!(value(log, "VMM-RC"), Some("0"), "{ctx}");
    assert_eq!(value(log, "GUEST-BALLOON"), Some("bound"), "{ctx}");
    assert!(log.contains("RESIZE-STATUS: HTTP/1.1 204"), "{ctx}");
    let (filled, inflated) = (kib(log, "RSS-FILLED-KIB"), kib(log, "RSS-INFLATED-KIB"));
    let pid = value(log, "VMM-PID").unwrap_or("?");
    eprintln!("inflate: VMM pid {pid}: VmRSS {filled} KiB filled -> {inflated} KiB inflated");
    assert!(
        filled >= 200 * mib,
        "the filled reading ({filled} KiB, pid {pid}) is not a VMM whose guest touched 200 MiB: {ctx}"
    );
    assert!(
        inflated + 100 * mib <= filled,
        "VmRSS of pid {pid}: {filled} KiB filled -> {inflated} KiB after a 128 MiB inflate \
         (expected a fall of at least 100 MiB): {ctx}"
    );
    check_rebind(log, &ctx);
    assert_eq!(value(log, "THINVM-TEST-RC"), Some("0"), "{ctx}");

    let r = &results[1];
    let log = &r.log;
    let ctx = format!("{} (console {}):\n{log}", r.name, r.console_log.display());
    assert_eq!(r.status, Status::Passed, "{ctx}");
    assert_eq!(value(log, "VMM-RC"), Some("0"), "{ctx}");
    let (filled, reported) = (kib(log, "RSS-FILLED-KIB"), kib(log, "RSS-REPORTED-KIB"));
    let pid = value(log, "VMM-PID").unwrap_or("?");
    eprintln!("reporting: VMM pid {pid}: VmRSS {filled} KiB filled -> {reported} KiB freed");
    assert!(
        filled >= 150 * mib,
        "the filled reading ({filled} KiB, pid {pid}) is not a VMM whose guest touched 150 MiB: {ctx}"
    );
    assert!(
        reported + 75 * mib <= filled,
        "VmRSS of pid {pid}: {filled} KiB filled -> {reported} KiB 30 s after the guest freed \
         150 MiB (expected a fall of at least 75 MiB): {ctx}"
    );
    assert_eq!(value(log, "THINVM-TEST-RC"), Some("0"), "{ctx}");
}

/// The guest unbound `virtio_balloon` with 128 MiB inflated (the driver gave it all back, the
/// device was reset) and bound it again: the driver inflated to the target again, a resize to
/// 160 MiB lowered MemTotal further, and the statistics of the smaller guest came through the
/// new stats queue.
fn check_rebind(log: &str, ctx: &str) {
    let kib = |key| {
        value(log, key)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key}: {ctx}"))
    };
    let before = kib("GUEST-MEMTOTAL-BEFORE");
    assert_eq!(value(log, "REBIND-BALLOON-UNBOUND"), Some("yes"), "{ctx}");
    let unbound = kib("REBIND-MEMTOTAL-UNBOUND");
    assert!(
        unbound + 1024 >= before,
        "MemTotal {unbound} KiB after the unbind, {before} KiB before the inflate: {ctx}"
    );
    assert_eq!(value(log, "REBIND-BALLOON-BOUND"), Some("yes"), "{ctx}");
    let reinflated = kib("REBIND-MEMTOTAL-REINFLATED");
    assert!(
        reinflated + 125_000 <= before,
        "MemTotal {reinflated} KiB after the rebind (target 128 MiB): {ctx}"
    );
    assert!(log.contains("REBIND-RESIZE-STATUS: HTTP/1.1 204"), "{ctx}");
    let inflated = kib("REBIND-MEMTOTAL-INFLATED");
    assert!(
        inflated + 158_000 <= before,
        "MemTotal {inflated} KiB after a 160 MiB resize: {ctx}"
    );
    let fresh = value(log, "REBIND-STATS-FRESH").unwrap_or_default();
    assert!(
        fresh.starts_with("yes"),
        "stats after the rebind: {fresh}: {ctx}"
    );
    assert!(
        !log.contains("activation refused"),
        "the VMM refused an activation: {ctx}"
    );
}
