#!/bin/sh
# Prints facts the end-to-end checks compare with what the VMM was asked for.
echo "UNAME=$(uname -r)"
echo "NPROC=$(nproc)"
echo "MEMTOTAL_KB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
poweroff -f
