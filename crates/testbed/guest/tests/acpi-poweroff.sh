#!/bin/sh
# busybox `poweroff -f` calls reboot(RB_POWER_OFF): ACPI S5. The VMM must exit with code 0.
poweroff -f
