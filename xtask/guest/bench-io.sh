#!/bin/sh
# `cargo xtask bench io`, the guest side. /dev/vda: the disk under test (raw, 256 MiB);
# /dev/vdb: a read-only ext4 "tools" disk with fio, iperf3 and their libraries (too big for the
# initramfs). The card with MAC 02:54:00:10:00:02 faces the outer machine at 10.213.10.1.
# Prints one @@IO ...@@ line per fio job and one @@NET ...@@ line per iperf3 direction.
secs=5
for w in $(cat /proc/cmdline); do
    case "$w" in thinvm.bench_secs=*) secs="${w#thinvm.bench_secs=}" ;; esac
done
mkdir -p /opt
mount -o ro /dev/vdb /opt || { echo "BENCH-FAIL no tools disk"; exit 1; }
tool() { /opt/lib/ld-linux-x86-64.so.2 --library-path /opt/lib "/opt/bin/$@"; }
for spec in randread:4k:1 randwrite:4k:1 randread:4k:32 randwrite:4k:32 read:1m:4 write:1m:4; do
    set -- $(echo "$spec" | tr : ' ')
    line=$(tool fio --name=b --filename=/dev/vda --direct=1 --ioengine=libaio --rw="$1" \
        --bs="$2" --iodepth="$3" --runtime="$secs" --time_based --size=192M --norandommap \
        --randrepeat=0 --minimal 2>/dev/null | tail -n 1)
    case "$1" in
        *read) f_bw=7; f_iops=8 ;;
        *) f_bw=48; f_iops=49 ;;
    esac
    echo "$line" | awk -F';' -v t="$1-$2-qd$3" -v b="$f_bw" -v i="$f_iops" \
        'NF > 100 { printf "@@IO test=%s iops=%s bw_kib=%s@@\n", t, $i, $b }'
done
dev=$(for d in /sys/class/net/*; do [ "$(cat $d/address)" = "02:54:00:10:00:02" ] && basename $d; done)
[ -n "$dev" ] || { echo "BENCH-FAIL no card"; exit 1; }
ip link set "$dev" up
ip addr add 10.213.10.2/24 dev "$dev"
i=0
until ping -c 1 -W 1 10.213.10.1 >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -ge 60 ] && { echo "BENCH-FAIL no ping"; exit 1; }
done
for dir in g2h h2g; do
    flag=
    [ "$dir" = h2g ] && flag=-R
    mbps=$(tool iperf3 -c 10.213.10.1 $flag -t "$secs" -f m 2>/dev/null | awk '/receiver/ { print $(NF-2) }')
    echo "@@NET test=$dir mbps=${mbps:-0}@@"
done
umount /opt
