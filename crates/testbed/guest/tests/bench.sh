#!/bin/sh
# The boot benchmark only needs the /init marker: power off at once.
poweroff -f
