#!/bin/sh
# thinvm guest /init (busybox). The marker is the first thing it does: the boot benchmark
# times it. Kernel cmdline `thinvm.test=NAME` runs /tests/NAME.sh and powers off; `root=DEV`
# (with `rw` or `ro`) mounts DEV once the modules are loaded and switches to its /sbin/init, as
# a distribution's initramfs does; without either an interactive shell runs on the console and
# the guest powers off when it exits.
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
root=
root_mode=ro
for word in $(cat /proc/cmdline); do
    case "$word" in
        thinvm.test=*) test_name="${word#thinvm.test=}" ;;
        root=*) root="${word#root=}" ;;
        rw) root_mode=rw ;;
        ro) root_mode=ro ;;
    esac
done
if [ -n "$root" ]; then
    i=0
    while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    mkdir -p /newroot
    if mount -o "$root_mode" "$root" /newroot && [ -x /newroot/sbin/init ]; then
        umount /tmp
        mount --move /dev /newroot/dev 2>/dev/null || umount /dev
        umount /sys /proc
        exec switch_root /newroot /sbin/init
    fi
    echo "thinvm-init: cannot boot from root=$root ($root_mode); starting a shell"
fi
if [ -n "$test_name" ]; then
    if [ -f "/tests/$test_name.sh" ]; then
        # The kernel's console lines (a driver bound again, say) would land in the middle of the
        # script's KEY=value lines on the shared serial port: only emergencies (panics) reach
        # the console while a script runs; the kernel log follows when the script failed.
        echo 1 > /proc/sys/kernel/printk
        sh "/tests/$test_name.sh"
        rc=$?
        echo "THINVM-TEST-RC=$rc"
        [ "$rc" -eq 0 ] || dmesg | tail -n 60
    else
        echo "thinvm-init: no test script /tests/$test_name.sh"
    fi
    poweroff -f
fi
export PS1='thinvm-guest# '
setsid cttyhack sh
poweroff -f
