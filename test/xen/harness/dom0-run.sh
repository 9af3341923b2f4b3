#!/bin/bash
# Runs in dom0, chrooted in the host root, as the child of the initramfs's
# PID 1. Starts the Xen daemons, then the test's script (dom0.sh in the run
# dir) with working directory DMU_WORKDIR and env DMU_OUT, and writes its exit
# status to $DMU_OUT/exit-code. Exit status: the script's.
# Env from PID 1: DMU_OUT (run dir, writable), DMU_HARNESS (this directory).
set -u

stamp() { echo "$1 $(cut -d' ' -f1 /proc/uptime)" >> "$DMU_OUT/timeline"; }
stamp dom0-userspace

. "$DMU_HARNESS/dom0-up.sh"
if ! dmu_xen_up; then
	echo 90 > "$DMU_OUT/exit-code"
	exit 90
fi
stamp xen-daemons-up

# The test's environment (shell-quoted by the host) and the harness's paths.
. "$DMU_OUT/env.sh"
export DMU_OUT DMU_HARNESS

cd "$DMU_WORKDIR" || exit 89
stamp script-start
bash "$DMU_OUT/dom0.sh" 2>&1 | tee "$DMU_OUT/dom0.log"
rc=${PIPESTATUS[0]}
stamp script-end
echo "$rc" > "$DMU_OUT/exit-code"

# Keep xl's and the hotplug scripts' logs for post-mortems.
cp -r /var/log/xen "$DMU_OUT/xen-logs" 2>/dev/null
exit "$rc"
