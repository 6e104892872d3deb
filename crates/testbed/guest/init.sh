#!/bin/sh
# thinvm guest /init (busybox). The marker is the first thing it does: the boot benchmark
# times it. Kernel cmdline `thinvm.test=NAME` runs /tests/NAME.sh and powers off; without it an
# interactive shell runs on the console and the guest powers off when it exits.
echo THINVM-GUEST-INIT
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run
mount -t tmpfs tmpfs /tmp
for m in $(cat /etc/thinvm-modules); do
    modprobe "$m" || echo "thinvm-init: modprobe $m failed"
done
test_name=
for word in $(cat /proc/cmdline); do
    case "$word" in
        thinvm.test=*) test_name="${word#thinvm.test=}" ;;
    esac
done
if [ -n "$test_name" ]; then
    if [ -f "/tests/$test_name.sh" ]; then
        sh "/tests/$test_name.sh"
        echo "THINVM-TEST-RC=$?"
    else
        echo "thinvm-init: no test script /tests/$test_name.sh"
    fi
    poweroff -f
fi
export PS1='thinvm-guest# '
setsid cttyhack sh
poweroff -f
