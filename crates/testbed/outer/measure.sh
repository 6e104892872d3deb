#!/bin/sh
# usage: thinvm-measure LABEL CMD [ARGS...]
# Runs CMD (a VMM) with stdin from /dev/null, passes its output through, and prints
#   @@BENCH label=LABEL init_ms=N rc=N rss_anon_kb=N rss_file_kb=N rss_shmem_kb=N hwm_kb=N@@
# init_ms: /proc/uptime from the start of CMD to the guest's THINVM-GUEST-INIT line (10 ms
# resolution; -1 if never seen). rss_*: peaks of RssAnon/RssFile/RssShmem from
# /proc/PID/status sampled every 0.2 s; hwm_kb: the last VmHWM seen (includes guest RAM).
label=$1
shift
dir=$(mktemp -d /tmp/measure.XXXXXX)
mkfifo "$dir/out"
start=$(cut -d' ' -f1 /proc/uptime)
"$@" </dev/null >"$dir/out" 2>&1 &
pid=$!
(
    a=0; f=0; s=0; h=0
    while [ -e "/proc/$pid/status" ]; do
        set -- $(awk '/^RssAnon:/ {a=$2} /^RssFile:/ {f=$2} /^RssShmem:/ {s=$2} /^VmHWM:/ {h=$2}
                      END {print a+0, f+0, s+0, h+0}' "/proc/$pid/status" 2>/dev/null)
        [ "${1:-0}" -gt "$a" ] && a=$1
        [ "${2:-0}" -gt "$f" ] && f=$2
        [ "${3:-0}" -gt "$s" ] && s=$3
        [ "${4:-0}" -gt "$h" ] && h=$4
        echo "$a $f $s $h" > "$dir/rss"
        sleep 0.2
    done
) &
sampler=$!
init=
while IFS= read -r line; do
    printf '%s\n' "$line"
    if [ -z "$init" ]; then
        case "$line" in
            *THINVM-GUEST-INIT*) init=$(cut -d' ' -f1 /proc/uptime) ;;
        esac
    fi
done < "$dir/out"
wait "$pid"
rc=$?
wait "$sampler"
set -- $(cat "$dir/rss" 2>/dev/null || echo 0 0 0 0)
if [ -n "$init" ]; then
    ms=$(awk -v a="$start" -v b="$init" 'BEGIN { printf "%d", (b - a) * 1000 }')
else
    ms=-1
fi
echo "@@BENCH label=$label init_ms=$ms rc=$rc rss_anon_kb=$1 rss_file_kb=$2 rss_shmem_kb=$3 hwm_kb=$4@@"
rm -rf "$dir"
exit "$rc"
