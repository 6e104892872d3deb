#!/bin/bash
# Installs the Debian packages thinvm's setup, tests and benchmarks use (as root or with sudo),
# with retries: package mirrors are sometimes slow to answer.
set -euo pipefail
PKGS=(qemu-system-x86 qemu-utils cpio busybox-static lz4 kmod e2fsprogs iproute2 socat)
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
for attempt in 1 2 3; do
    if $SUDO apt-get update -qq && \
       DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        exit 0
    fi
    echo "deps: apt-get failed (attempt $attempt), retrying in 10 s" >&2
    sleep 10
done
echo "deps: could not install: ${missing[*]}" >&2
exit 1
