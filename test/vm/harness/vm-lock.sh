#!/bin/bash
# Run a command holding the machine's VM lock, first come first served.
# usage: vm-lock.sh CMD [ARGS...]     e.g. vm-lock.sh timeout -s KILL 900 qemu-system-x86_64 ...
# flock(1) alone is not fair: with several waiters one can starve for many
# minutes. So waiters first queue: a ticket named <ms-since-epoch>-<pid>-<n>
# in /tmp/dmu-vm.queue (same protocol as test/support/vm.ts), and take the
# flock only when their ticket is the oldest one whose process is alive.
# The ticket carries this shell's pid, which `exec flock` keeps, so it stays
# valid while the command runs and goes stale (dropped by others) afterwards.
# Its content is the process's start time, so a reused pid is not taken for
# the ticket's owner.
set -u
# DMU_VM_QUEUE / DMU_VM_LOCK: for testing this script only.
Q=${DMU_VM_QUEUE:-/tmp/dmu-vm.queue}
LOCK=${DMU_VM_LOCK:-/tmp/dmu-vm.lock}
mkdir -p "$Q"
T=$(printf '%015d' "$(date +%s%3N)")-$$-1
starttime() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
starttime $$ >"$Q/$T"
trap 'rm -f "$Q/$T"; exit 130' INT TERM HUP
while :; do
	head=
	for f in $(ls "$Q" | sort); do
		pid=${f#*-}
		pid=${pid%%-*}
		want=$(cat "$Q/$f" 2>/dev/null)
		# (an empty ticket is from an older harness: pid liveness only)
		if [ "$pid" = $$ ] || { [ -n "$want" ] && [ "$(starttime "$pid")" = "$want" ]; } ||
			{ [ -z "$want" ] && kill -0 "$pid" 2>/dev/null; }; then
			head=$f
			break
		fi
		rm -f "$Q/$f"
	done
	[ -z "$head" ] || [ "$head" = "$T" ] && break
	sleep 0.3
done
trap - INT TERM HUP
exec flock "$LOCK" "$@"
