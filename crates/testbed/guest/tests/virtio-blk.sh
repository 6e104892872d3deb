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
dd if=/dev/urandom of=/mnt/blob bs=4096 count=256 2>/dev/null
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
echo "RNG-CURRENT=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
echo "VIRTIO-BLK-DONE"
