#!/bin/bash
# Sets up thinvm on a fresh Debian 12 machine (as root, or a user with sudo):
#  - the Debian packages thinvm and its testbed use (QEMU, busybox-static, cpio, lz4, ...),
#  - thinvm itself, built with cargo and installed as /usr/local/bin/thinvm,
#  - the default VM: Debian's cloud kernel (downloaded with apt) and a busybox initramfs.
# Then `thinvm run` boots the default VM to an interactive shell.
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh
if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found: install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
fi
cargo build --release -p thinvm
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO install -m 0755 target/release/thinvm /usr/local/bin/thinvm
thinvm prepare
echo "setup: done. Run 'thinvm run' for a VM with a shell (Ctrl-A x quits)."
