#!/bin/bash
# Runs every thinvm test:
#  1. unit and integration tests of every crate (cargo test), including the KVM tests with
#     hand-made guest programs on this host's /dev/kvm and the storage tests against qemu-img;
#  2. the end-to-end tests: Debian's unmodified kernel booted by thinvm inside the nested
#     testbed (QEMU emulating an AMD-V machine with KVM inside), with virtio disks, rng, network, vsock and balloon;
#  3. short fuzzing runs of every cargo-fuzz target.
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh
echo "== 1/3 cargo test"
cargo test --workspace --profile ci
echo "== 2/3 end to end in the nested testbed"
# Boot cases, reboot/panic, the guest shell, and thinvmd in the outer machine: the power-button
# stop and 4 VMs at once (`-- e2e --only daemon-many-vms` runs that one alone).
cargo run --profile ci -q -p xtask -- e2e
# virtio: an ext4 disk written by the guest (raw and a qcow2 overlay), read-only disk, rng.
THINVM_E2E=1 cargo test --profile ci -p thinvm --test virtio_e2e
# virtio-net: guest and outer machine ping each other over a TAP, 16 MiB each way by TCP (sha256),
# on the userspace data path and with vhost=on.
THINVM_E2E=1 cargo test --profile ci -p thinvm --test net_e2e
# virtio-vsock: socat in guest and outer machine, 16 MiB each way through CONNECT and PATH_PORT (sha256).
THINVM_E2E=1 cargo test --profile ci -p thinvm --test vsock_e2e
# virtio-balloon: a 128 MiB inflate through vm.resize and free page reporting lower the VMM's RSS.
THINVM_E2E=1 cargo test --profile ci -p thinvm --test balloon_e2e
echo "== 3/3 fuzzing (short runs)"
scripts/fuzz.sh "${THINVM_FUZZ_SECONDS:-20}"
echo "test.sh: all tests passed"
