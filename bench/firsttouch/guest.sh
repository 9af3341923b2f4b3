#!/bin/bash
# Guest half of the first-touch benchmark (bench/firsttouch/run.ts drives it
# through test/support/vm.ts; see bench/firsttouch/README.md). Runs as root
# in the QEMU guest, in the repo, with:
#   KVER DMU_OUT            from the VM harness
#   BASE_MIB COW_MIB        the base image (random data, written by the host) and each CoW area
#   REGION_MIB              blocks one cold run may touch
#   BLOCK_SECTORS           CoW block size of both systems (dscow block, dm-snapshot chunk)
#   RUNTIME REPEAT          cap of one cold run (seconds), pairs per cold job
#   WARM_RUNTIME_MS WARM_REPEAT  length of one warm run (ms), pairs per warm job
#   JOBS                    "name:rw:bs:iodepth:peer:state ..."; peer is snapshot or linear,
#                           state cold (never-written or forgotten blocks) or warm
#   DISK_RATES              1: first measure the disk's own rates at depth 32
# /dev/vda: [0, BASE) base | [BASE, +COW) dscow's image | [+COW, +COW) dm-snapshot's store
#   | [+COW, +REGION) scratch, written by the disk-rate runs.
# dmu+dscow, dm-snapshot and dm-linear stand over the same base at the same
# time, so the two runs of a pair see the same moment of the emulated
# machine; the suite measures one system after the other.
set -euo pipefail

log() { echo "bench: $*"; }
BASE_S=$((BASE_MIB * 2048))
COW_S=$((COW_MIB * 2048))
BS_BYTES=$((BLOCK_SECTORS * 512))

modprobe dm-mod
modprobe dm-snapshot
insmod "kernel/build/$KVER/dmu.ko"
dmsetup create base --table "0 $BASE_S linear /dev/vda 0"
dmsetup create cow-dscow --table "0 $COW_S linear /dev/vda $BASE_S"
dmsetup create cow-snap --table "0 $COW_S linear /dev/vda $((BASE_S + COW_S))"
dmsetup create scratch --table "0 $((REGION_MIB * 2048)) linear /dev/vda $((BASE_S + 2 * COW_S))"

dmsetup create b-linear --table "0 $BASE_S linear /dev/mapper/base 0"
dmsetup create b-snapshot --table "0 $BASE_S snapshot /dev/mapper/base /dev/mapper/cow-snap P $BLOCK_SECTORS"
node dist/bin/dscow_tool.mjs -c /dev/mapper/cow-dscow /dev/mapper/base -b "$BS_BYTES" >"$DMU_OUT/dscow-create.txt" 2>&1
# dscow keeps block N at first_block + N * block size of its image.
FIRST_S=$(($(awk '$1 == "First" { print $3 }' "$DMU_OUT/dscow-create.txt") / 512))
dist/bin/cowd.mjs -p dscow b-dscow /dev/mapper/cow-dscow /dev/mapper/base >"$DMU_OUT/cowd.log" 2>&1 &
CPID=$!
for _ in $(seq 600); do
	[ "$(dmsetup status b-dscow 2>/dev/null | awk '{print $12}')" = daemon=connected ] && break
	sleep 0.1
done
[ "$(dmsetup status b-dscow 2>/dev/null | awk '{print $12}')" = daemon=connected ] ||
	{ log "cowd did not start: $(tail -2 "$DMU_OUT/cowd.log")"; exit 1; }

# A cold run must find its region unknown to the kernel: one cowd answer
# may map a run of 256 blocks, so the run before would have mapped part of
# the next region. Allocated blocks stay allocated; only the cache goes.
FORGET="dmsetup message b-dscow 0 invalidate 0 $((BASE_S / BLOCK_SECTORS))"

# cowd_ticks: CPU time (clock ticks, user + system) cowd has used.
cowd_ticks() { sed 's/.*) //' "/proc/$CPID/stat" | awk '{print $12 + $13}'; }

region_mib=0
# next_region: set off (MiB) to a region no earlier write touched.
next_region() { off=$region_mib; region_mib=$((region_mib + REGION_MIB)); }

# Untimed warm-up: one cold write pass over a region on each system, so
# cowd's first answers (run before V8 optimises them) and the first
# exception-store commit are not in the first pair.
next_region
for dev in dscow snapshot; do
	fio --name=warmup --filename=/dev/mapper/b-$dev --rw=write --bs=1M --iodepth=4 --direct=1 --ioengine=libaio \
		--offset="${off}M" --size="${REGION_MIB}M" --eta=never --output=/dev/null >/dev/null
done

# Reads allocate nothing: after a forget, the read region is as cold for
# dscow as on the first pass (and dm-linear has no state), so every read
# pair uses this one region. Writes get a new region per pair.
next_region
READ_OFF=$off

# The disk's own rates at depth 32, through dm-linear as both systems'
# copies go: random block reads of the base, random block and 4 KiB writes
# of the scratch area. The host turns them into what the disk alone would
# allow a first-touch pass (report.ts, firstTouchCeiling).
if [ "${DISK_RATES:-0}" = 1 ]; then
	log "disk rates at depth 32"
	fio --eta=never --output-format=json --output="$DMU_OUT/disk-rates.json" \
		--direct=1 --ioengine=libaio --iodepth=32 --randrepeat=0 --time_based --runtime=1 --size="${REGION_MIB}M" \
		--name=block-read --stonewall --filename=/dev/mapper/b-linear --offset="${READ_OFF}M" --rw=randread --bs="$BS_BYTES" \
		--name=block-write --stonewall --filename=/dev/mapper/scratch --rw=randwrite --bs="$BS_BYTES" \
		--name=small-write --stonewall --filename=/dev/mapper/scratch --rw=randwrite --bs=4k >/dev/null 2>"$DMU_OUT/disk-rates.err"
fi

# untimed_write DEV OFF_MIB: write one region of DEV once, sequentially.
untimed_write() {
	fio --name=fill --filename="$1" --rw=write --bs=1M --iodepth=4 --direct=1 --ioengine=libaio \
		--offset="${2}M" --size="${REGION_MIB}M" --eta=never --output=/dev/null >/dev/null
}

# Warm jobs share one region: dscow copies it once (the first warm job
# writes it through b-dscow). dm-linear's runs (w-linear) go to the very
# sectors of the image that hold those blocks, stacked as b-dscow is over
# the image: the two differ in the target alone, not in where the data
# lies. The base the other two stand on is not written.
WARM_OFF=
prepare_warm() {
	if [ -z "$WARM_OFF" ]; then
		next_region
		WARM_OFF=$off
		log "warm region: written once through dmu+dscow"
		untimed_write /dev/mapper/b-dscow "$WARM_OFF"
		dmsetup create w-linear --table "0 $((REGION_MIB * 2048)) linear /dev/mapper/cow-dscow $((FIRST_S + WARM_OFF * 2048))"
		cmp -s <(dd if=/dev/mapper/w-linear bs=1M count=1 iflag=direct status=none) \
			<(dd if=/dev/mapper/b-dscow bs=1M skip="$WARM_OFF" count=1 iflag=direct status=none) ||
			{ log "w-linear does not hold dscow's warm blocks"; exit 1; }
	fi
	# Cold runs make the target forget every mapping: read the region
	# once, as any use of a disk after an attach would, so each block is
	# remembered again (allocated blocks are answered writable).
	fio --name=remap --filename=/dev/mapper/b-dscow --rw=read --bs=1M --iodepth=4 --direct=1 --ioengine=libaio \
		--offset="${WARM_OFF}M" --size="${REGION_MIB}M" --eta=never --output=/dev/null >/dev/null
}

# settle: let the work a job leaves behind finish before the next starts.
# A first-write job ends with cowd recording its last allocations and
# dm-snapshot committing exceptions, and the host still writing back what
# the guest wrote. A flush makes both systems commit; the pause is for the
# host. (It did not cure the slow first run of the cold sequential reads,
# whichever system goes first: see README.md.)
settle() {
	sync /dev/mapper/b-dscow /dev/mapper/b-snapshot
	sleep 2
}

for job in $JOBS; do
	IFS=: read -r name rw bs qd peer state <<<"$job"
	f=/tmp/$name.fio
	cat >"$f" <<-EOF
		[global]
		rw=$rw
		bs=$bs
		iodepth=$qd
		direct=1
		ioengine=libaio
		size=${REGION_MIB}M
		randrepeat=0
		stonewall
	EOF
	# A cold run is one pass capped at RUNTIME. A warm one runs for
	# WARM_RUNTIME_MS, short: the host's speed wanders over every span
	# measured (a pair of 3 ms runs differs as much as a pair of 2 s runs,
	# about 15%), so many short pairs say more than a few long ones.
	pairs=$REPEAT
	if [ "$state" = warm ]; then
		printf 'time_based\nruntime=%sms\n' "$WARM_RUNTIME_MS" >>"$f"
		pairs=$WARM_REPEAT
		prepare_warm
	else
		echo "runtime=$RUNTIME" >>"$f"
	fi
	for rep in $(seq "$pairs"); do
		if [ "$state" = warm ]; then
			off=$WARM_OFF
		elif [ "$rw" = read ] || [ "$rw" = randread ]; then
			off=$READ_OFF
		else
			next_region
		fi
		# Alternate which system runs first, so neither always gets the
		# fresher moment.
		if [ $((rep % 2)) -eq 1 ]; then order="dscow $peer"; else order="$peer dscow"; fi
		for sys in $order; do
			dev=/dev/mapper/b-$sys
			sys_off=$off
			[ "$state" = warm ] && [ "$sys" = linear ] && { dev=/dev/mapper/w-linear; sys_off=0; }
			printf '[%s.%s]\nfilename=%s\noffset=%sM\n' "$sys" "$rep" "$dev" "$sys_off" >>"$f"
			[ "$sys" = dscow ] && [ "$state" = cold ] && printf 'exec_prerun=%s\n' "$FORGET" >>"$f"
		done
	done
	settle
	log "$name: $pairs pairs, dmu+dscow and $peer"
	c0=$(cowd_ticks)
	fio --eta=never --output-format=json --output="$DMU_OUT/fio-$name.json" "$f" >/dev/null 2>"$DMU_OUT/fio-$name.err"
	echo "$name $(($(cowd_ticks) - c0))" >>"$DMU_OUT/cowd-ticks.txt"
done

dmsetup status b-dscow >"$DMU_OUT/status-dscow.txt"
dmsetup status b-snapshot >"$DMU_OUT/status-snapshot.txt"
kill -TERM "$CPID"
wait "$CPID" || true
dmsetup remove b-snapshot
dmsetup remove b-linear
[ -z "$WARM_OFF" ] || dmsetup remove w-linear
# A clean image after all of it: the allocations the kernel reported were recorded.
node dist/bin/dmu.mjs check /dev/mapper/cow-dscow >"$DMU_OUT/check.txt" 2>&1 || log "dmu check: $(tail -1 "$DMU_OUT/check.txt")"
log done
