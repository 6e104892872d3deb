#!/bin/sh
# virtio-blk + virtio-rng end to end (run by thinvm's virtio_e2e test).
# /dev/vda: an ext4 image the host made with /hello; the guest writes /from-guest and /blob.
# /dev/vdb: a read-only raw disk whose first bytes are "THINVM-RO-DISK"; writes must fail.
echo "PCI=$(cat /sys/bus/pci/devices/*/device 2>/dev/null | tr '\n' ' ')"
[ -b /dev/vda ] || { echo "BLK-FAIL no /dev/vda"; exit 1; }
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt || { echo "BLK-FAIL mount"; exit 1; }
echo "HELLO=$(cat /mnt/hello)"
echo "written by the thinvm guest" > /mnt/from-guest
# Moves every virtio interrupt to the CPUs in mask $1 (Linux masks MSI-X vectors to do that).
shuffle() {
    for irq in $(awk -F: '/virtio/ { print $1 }' /proc/interrupts); do
        echo "$1" > "/proc/irq/$((irq))/smp_affinity" 2>/dev/null
    done
}
: > /mnt/blob
for mask in 1 2 1 2; do
    [ "$(nproc)" -ge 2 ] && shuffle "$mask"
    dd if=/dev/urandom bs=4096 count=64 2>/dev/null >> /mnt/blob
    sync
done
echo "NPROC=$(nproc)"
echo "BLOB-MD5=$(md5sum /mnt/blob | cut -d' ' -f1)"
sync
umount /mnt || { echo "BLK-FAIL umount"; exit 1; }
echo "RO-HEAD=$(dd if=/dev/vdb bs=14 count=1 2>/dev/null)"
echo "RO-FLAG=$(cat /sys/block/vdb/ro)"
if dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then
    echo "RO-WRITE=accepted"
else
    echo "RO-WRITE=refused"
fi
echo "RNG-BYTES=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | wc -c)"
# virtio-blk's queue vectors are managed (fixed affinity); the rng's is not: move it between
# CPUs while reading, so its MSI-X entry is masked, rewritten and unmasked under I/O.
for mask in 1 2 1 2; do
    [ "$(nproc)" -ge 2 ] && shuffle "$mask"
    dd if=/dev/hwrng bs=64 count=8 2>/dev/null >/dev/null
done
grep virtio /proc/interrupts
echo "RNG-IRQ-CPUS=$(awk '/virtio.*-input/ { n = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/ && $i > 0) n++; print n }' /proc/interrupts)"
echo "SERIAL=$(cat /sys/block/vda/serial 2>/dev/null)"
echo "RNG-CURRENT=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
# Unbind and bind the drivers (each resets its device, then activates it anew): vda reads the
# same bytes afterwards (page cache dropped), the rng gives bytes again.
vdev=$(basename "$(readlink /sys/block/vda/device)")
before=$(dd if=/dev/vda bs=64k count=64 2>/dev/null | sha256sum | cut -d' ' -f1)
echo "$vdev" > /sys/bus/virtio/drivers/virtio_blk/unbind
[ -e /sys/block/vda ] && echo "REBIND-BLK-UNBOUND=no" || echo "REBIND-BLK-UNBOUND=yes"
echo "$vdev" > /sys/bus/virtio/drivers/virtio_blk/bind
disk=$(ls "/sys/bus/virtio/devices/$vdev/block" 2>/dev/null)
i=0
until [ -n "$disk" ] && [ -b "/dev/$disk" ] || [ $i -ge 50 ]; do
    sleep 0.1; i=$((i + 1)); disk=$(ls "/sys/bus/virtio/devices/$vdev/block" 2>/dev/null)
done
echo "REBIND-BLK-DISK=$disk"
echo 3 > /proc/sys/vm/drop_caches
after=$(dd if="/dev/$disk" bs=64k count=64 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ -n "$disk" ] && [ "$before" = "$after" ]; then
    echo "REBIND-BLK-READ=same"
else
    echo "REBIND-BLK-READ=differs $before $after"
fi
rdev=$(basename "$(ls -d /sys/bus/virtio/drivers/virtio_rng/virtio* | head -n 1)")
echo "$rdev" > /sys/bus/virtio/drivers/virtio_rng/unbind
echo "$rdev" > /sys/bus/virtio/drivers/virtio_rng/bind
echo "REBIND-RNG-BYTES=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | wc -c)"
echo "VIRTIO-BLK-DONE"
