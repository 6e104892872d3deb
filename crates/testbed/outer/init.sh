#!/bin/sh
# thinvm testbed: /init of the outer (TCG) machine. Loads KVM, then either runs the batch of
# scenarios in /scenarios/list ("NAME TIMEOUT_SECS" lines) with console markers
#   @@THINVM-BEGIN NAME@@ ... [@@THINVM-TIMEOUT NAME@@] @@THINVM-END NAME rc=N@@
# or, when /etc/thinvm-interactive exists, runs /scenarios/interactive.sh on the console tty
# and reports its exit code as @@THINVM-EXIT rc=N@@ on the console.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t devpts devpts /dev/pts 2>/dev/null
set -a
. /etc/thinvm-env
set +a
for m in $(cat /etc/thinvm-modules); do
    modprobe "$m" || echo "thinvm-outer: modprobe $m failed"
done
for d in /sys/block/vd*; do
    [ -e "$d" ] && export SCRATCH_DISK="/dev/${d##*/}"
done

if [ ! -c /dev/kvm ]; then
    echo "@@THINVM-OUTER-ERROR no /dev/kvm@@"
    [ -e /etc/thinvm-interactive ] && echo "@@THINVM-EXIT rc=2@@"
    poweroff -f
fi
echo "@@THINVM-OUTER-READY@@"

if [ -e /etc/thinvm-interactive ]; then
    setsid cttyhack sh /scenarios/interactive.sh
    rc=$?
    echo "@@THINVM-EXIT rc=$rc@@"
    poweroff -f
fi

run_one() {
    name=$1
    secs=$2
    echo "@@THINVM-BEGIN $name@@"
    rm -f /tmp/timed-out
    # Own session and process group, so the watchdog can stop the script and its VMM.
    setsid sh "/scenarios/$name.sh" </dev/null &
    pid=$!
    (
        sleep "$secs"
        echo "@@THINVM-TIMEOUT $name@@"
        touch /tmp/timed-out
        kill -TERM -"$pid" 2>/dev/null
        sleep 10
        kill -KILL -"$pid" 2>/dev/null
    ) &
    watchdog=$!
    wait "$pid"
    rc=$?
    kill "$watchdog" 2>/dev/null
    [ -e /tmp/timed-out ] && rc=124
    echo "@@THINVM-END $name rc=$rc@@"
}

while read -r name secs; do
    [ -n "$name" ] && run_one "$name" "$secs"
done < /scenarios/list
echo "@@THINVM-OUTER-DONE@@"
poweroff -f
