#!/bin/sh
# Seeds the kernel_load corpus with the heads of real kernels (the bzImage and the vmlinux of
# Debian's package, from thinvm's cache, when present) and small synthetic headers.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
c=$here/corpus/kernel_load
mkdir -p "$c"
for k in "$HOME"/.cache/thinvm/kernel/*/boot/vmlinuz-* "$HOME"/.cache/thinvm/kernel/*/vmlinux; do
    [ -f "$k" ] || continue
    head -c 65536 "$k" > "$c/$(basename "$k").head"
done
printf '\177ELF\002\001\001' > "$c/elf-magic"
echo "seeded: $(ls "$c" | wc -l) kernel heads"
