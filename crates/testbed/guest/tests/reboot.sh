#!/bin/sh
# The VMM must exit with code 3 (guest reboot).
reboot -f
