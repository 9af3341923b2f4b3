#!/bin/bash
# Guest half of bench/hitcost (run.ts drives it through test/support/vm.ts;
# see README.md). Runs as root in the QEMU guest, in the repo, with:
#   KVER DMU_OUT            from the VM harness
#   MODULES                 dmu.ko files (host paths, seen via 9p), loaded in
#                           turn; even passes load them in reverse order
#   SIZE_MIB BLOCK_SECTORS  area measured (every block mapped first), dmu block
#   JOBS                    "name:rw:bytes:per_round:order ..." with rw read or
#                           write and order seq or rand
#   ROUNDS PASSES           rounds per job and module, passes over MODULES
#   ABIO                    the abio binary (host path)
#   DISK                    null (default): null_blk, no data, completes in
#                           the submitter's context, so a bio costs CPU alone;
#                           virtio: /dev/vda, the VM's disk
# Each round file holds one line per round: seconds on dm-linear, seconds
# on dmu, for the same I/Os.
set -euo pipefail
. bench/identity-guest.sh

log() { echo "hitcost: $*"; }
SECTORS=$((SIZE_MIB * 2048))
RLOG=/tmp/responder.jsonl

modprobe dm-mod
DEV=/dev/vda
if [ "${DISK:-null}" = null ]; then
	DEV=$(null_blk_device "$SIZE_MIB")
else
	# So that no measured write pays for the host allocating the image file.
	dd if=/dev/zero of=$DEV bs=1M count="$SIZE_MIB" oflag=direct status=none
fi

measure() { # pass index module
	local pass=$1 idx=$2 ko=$3 job name rw bytes per order flags
	insmod "$ko"
	dmsetup create hc-lin --table "0 $SECTORS linear $DEV 0"
	dmsetup create hc-dmu --table "0 $SECTORS userspace hitcost $BLOCK_SECTORS $DEV"
	start_identity_responder hitcost "$RLOG"
	dd if=/dev/mapper/hc-dmu of=/dev/null bs=1M iflag=direct status=none
	for job in $JOBS; do
		IFS=: read -r name rw bytes per order <<<"$job"
		flags=""
		[ "$rw" = write ] && flags="$flags -w"
		[ "$order" = rand ] && flags="$flags -r"
		# shellcheck disable=SC2086
		"$ABIO" $flags -b "$bytes" -s "$SIZE_MIB" -n "$per" -k "$ROUNDS" \
			/dev/mapper/hc-lin /dev/mapper/hc-dmu \
			>"$DMU_OUT/rounds-$pass-$idx-$name.txt"
	done
	dmsetup status hc-dmu >"$DMU_OUT/status-$pass-$idx.txt"
	log "pass $pass, module $idx ($ko): $(cat "$DMU_OUT/status-$pass-$idx.txt")"
	kill -TERM "$RPID"
	wait "$RPID" || true
	dmsetup remove hc-dmu
	dmsetup remove hc-lin
	rmmod dmu
}

read -r -a mods <<<"$MODULES"
for pass in $(seq "$PASSES"); do
	if [ $((pass % 2)) -eq 1 ]; then
		for i in "${!mods[@]}"; do measure "$pass" "$i" "${mods[$i]}"; done
	else
		for ((i = ${#mods[@]} - 1; i >= 0; i--)); do measure "$pass" "$i" "${mods[$i]}"; done
	fi
done
log done
