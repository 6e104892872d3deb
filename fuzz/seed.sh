#!/bin/sh
# Seeds the fuzz corpora with small images made by qemu-img (qemu-utils).
# Usage: fuzz/seed.sh   (from anywhere; writes fuzz/corpus/<target>/)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
q=$here/corpus/qcow2_open; v=$here/corpus/vhd_open; x=$here/corpus/vhdx_open
mkdir -p "$q" "$v" "$x"
# Small data with some written stretches.
head -c 65536 /dev/urandom > "$tmp/data"
printf 'thinvm' > "$tmp/tag"
for opts in "cluster_size=512" "cluster_size=4096,refcount_bits=1" "compat=0.10,cluster_size=1024" \
            "cluster_size=65536,refcount_bits=64" "extended_l2=on" "lazy_refcounts=on,cluster_size=2048"; do
    name=$(echo "$opts" | tr ',=' '__')
    qemu-img create -q -f qcow2 -o "$opts" "$q/$name" 256K
    qemu-io -f qcow2 -c "write -P 0x61 0 3k" -c "write -z 64k 8k" "$q/$name" >/dev/null
done
qemu-img create -q -f raw "$tmp/base.raw" 256K
qemu-img create -q -f qcow2 -o cluster_size=512 -b "$tmp/base.raw" -F raw "$q/overlay"
qemu-img convert -c -f raw -O qcow2 -o cluster_size=4096 "$tmp/data" "$q/compressed"
qemu-img create -q -f vpc "$v/dynamic" 256K
qemu-io -f vpc -c "write -P 0x62 0 4k" "$v/dynamic" >/dev/null
qemu-img create -q -f vpc -o subformat=fixed "$v/fixed" 64K
qemu-img create -q -f vhdx -o block_size=1M,log_size=1M "$x/dynamic" 2M
qemu-io -f vhdx -c "write -P 0x63 0 4k" "$x/dynamic" >/dev/null
echo "seeded: $(ls "$q" | wc -l) qcow2, $(ls "$v" | wc -l) vhd, $(ls "$x" | wc -l) vhdx"
