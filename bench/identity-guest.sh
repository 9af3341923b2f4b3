#!/bin/bash
# Sourced by the guest scripts of bench/target and bench/hitcost: both put
# dmu and dm-linear over one device and serve dmu with the identity
# responder. Needs DMU_OUT (the VM harness sets it); run from the repo.

# null_blk_device MIB: load null_blk with one device of at least MIB MiB
# that moves no data and completes bios in the submitter's context (so a
# bio costs CPU alone), and print its path.
null_blk_device() {
	modprobe null_blk nr_devices=1 gb=$((($1 + 1023) / 1024)) irqmode=0 memory_backed=0 >&2
	echo /dev/nullb0
}

# start_identity_responder KEY LOG: serve /dev/dmu/KEY with the identity
# responder (every block maps to the same sectors of the data device,
# writable, so after one miss per block every bio takes the hit path),
# logging its messages to LOG; return once it serves, its PID in RPID.
start_identity_responder() {
	local ready=/tmp/responder-$1.ready
	rm -f "$ready"
	node dist/test/support/responder-cli.js --device "/dev/dmu/$1" \
		--log "$2" --ready "$ready" 2>>"$DMU_OUT/responder.stderr" &
	RPID=$!
	for _ in $(seq 300); do [ -e "$ready" ] && break; sleep 0.1; done
	[ -e "$ready" ] || { echo "responder for /dev/dmu/$1 did not start" >&2; exit 1; }
}
