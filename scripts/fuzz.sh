#!/bin/bash
# Short fuzzing runs of every cargo-fuzz target (seconds per target: $1, default 20).
# Installs cargo-fuzz (pinned) when missing; needs the nightly toolchain (rustup).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
if ! rustup toolchain list | grep -q nightly; then
    echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
# Every cargo-fuzz crate in the tree: fuzz/ (storage) and crates/*/fuzz/.
for dir in fuzz crates/*/fuzz; do
    [ -f "$dir/Cargo.toml" ] || continue
    [ -x "$dir/seed.sh" ] && "$dir/seed.sh"
    for target in $(cd "$dir" && cargo +nightly fuzz list); do
        echo "fuzz: $dir/$target for ${SECS}s"
        mkdir -p "$dir/corpus/$target"
        # VHDX images are several MiB at the least (headers, log, metadata, BAT).
        case "$target" in vhdx_*) maxlen=10485760 ;; *) maxlen=1048576 ;; esac
        (cd "$dir" && cargo +nightly fuzz run "$target" "corpus/$target" -- \
            -max_total_time="$SECS" -max_len="$maxlen" -rss_limit_mb=2048 -print_final_stats=0 >/dev/null 2>"/tmp/fuzz-$target.log") || {
            tail -40 "/tmp/fuzz-$target.log" >&2
            echo "fuzz: $target found a failure (artifacts in $dir/artifacts/$target)" >&2
            exit 1
        }
    done
done
echo "fuzz: all targets ran clean"
