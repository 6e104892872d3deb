#!/bin/sh
# Waits for the ACPI power button (the button driver reports the fixed-feature button as
# KEY_POWER on an input device), then powers off: what acpid with a PWRF rule does on a full
# system. Needs the button and evdev modules.
name=$(grep -l "Power Button" /sys/class/input/event*/device/name 2>/dev/null | head -1)
if [ -z "$name" ]; then
    echo "POWER-BUTTON-MISSING"
    ls /sys/class/input
    exit 1
fi
ev=$(basename "$(dirname "$(dirname "$name")")")
echo "POWER-BUTTON-READY $ev free_kb=$(awk '/^MemFree/ { print $2 }' /proc/meminfo)"
head -c 24 "/dev/input/$ev" >/dev/null
echo "POWER-BUTTON-PRESSED"
poweroff -f
