#!/bin/bash
# Guest half of the issue-3 target benchmark (bench/target/run.ts drives it
# through test/support/vm.ts; see bench/target/README.md). Runs as root in
# the QEMU guest, in the repo, with:
#   KVER DMU_OUT                 from the VM harness
#   SIZE_MIB BLOCK_SECTORS       area measured, dmu block size
#   RUNTIME RAMP REPEAT IODEPTH  fio settings
#   JOBS                         "name:rw:bs ..." e.g. "seq-read:read:1M"
#   DMU_KO                       the module to load (host path, seen via 9p)
#   DISK                         virtio (default): /dev/vda, the VM's disk;
#                                null: a null_blk device (no data, completes
#                                in the submitter's context), so a bio costs
#                                CPU alone and the two targets' own costs show
# The backing device is the one both targets map.
set -euo pipefail
. bench/identity-guest.sh

log() { echo "bench: $*"; }
SECTORS=$((SIZE_MIB * 2048))
RLOG=/tmp/responder.jsonl

modprobe dm-mod
insmod "${DMU_KO:-kernel/build/$KVER/dmu.ko}"
DEV=/dev/vda
if [ "${DISK:-virtio}" = null ]; then
	DEV=$(null_blk_device "$SIZE_MIB")
fi
dmsetup create bench-lin --table "0 $SECTORS linear $DEV 0"
dmsetup create bench-dmu --table "0 $SECTORS userspace bench $BLOCK_SECTORS $DEV"

start_identity_responder bench "$RLOG"

# Prefill the backing device through dm-linear, so that no measured job
# pays for the host allocating the sparse image file underneath.
dd if=/dev/zero of=/dev/mapper/bench-lin bs=1M count="$SIZE_MIB" oflag=direct status=none

# Prewarm: read every block once through dmu (1 MiB reads: several MAP
# requests per bio, answered in batches).
t0=$(date +%s%N)
dd if=/dev/mapper/bench-dmu of=/dev/null bs=1M iflag=direct status=none
t1=$(date +%s%N)
echo $(((t1 - t0) / 1000000)) >"$DMU_OUT/prewarm-ms"
dmsetup status bench-dmu >"$DMU_OUT/status-prewarm.txt"
wc -l <"$RLOG" >"$DMU_OUT/log-lines-prewarm"
log "prewarm $(cat "$DMU_OUT/prewarm-ms") ms: $(cat "$DMU_OUT/status-prewarm.txt")"

# Each job on both devices, as pairs of short runs in one fio: jobs
# lin.N and dmu.N run one after the other (stonewall), the order
# alternating between pairs so neither device always runs first. TCG's
# speed drifts over seconds; the two runs of a pair see nearly the same
# machine, and one fio pays its start-up (~1.5 s here) once per job.
for job in $JOBS; do
	IFS=: read -r name rw bs <<<"$job"
	f=/tmp/$name.fio
	cat >"$f" <<-EOF
		[global]
		rw=$rw
		bs=$bs
		direct=1
		ioengine=libaio
		iodepth=$IODEPTH
		size=${SIZE_MIB}M
		time_based
		runtime=$RUNTIME
		ramp_time=$RAMP
		randrepeat=0
		stonewall
	EOF
	for rep in $(seq "$REPEAT"); do
		if [ $((rep % 2)) -eq 1 ]; then order="lin dmu"; else order="dmu lin"; fi
		for dev in $order; do
			printf '[%s.%s]\nfilename=/dev/mapper/bench-%s\n' "$dev" "$rep" "$dev" >>"$f"
		done
	done
	log "$name: $REPEAT pairs of $RUNTIME s runs"
	fio --eta=never --output-format=json --output="$DMU_OUT/fio-$name.json" "$f"
done

dmsetup status bench-dmu >"$DMU_OUT/status-end.txt"
kill -TERM "$RPID"
wait "$RPID" || true
cp "$RLOG" "$DMU_OUT/responder.jsonl"
dmsetup remove bench-dmu
dmsetup remove bench-lin
log done
