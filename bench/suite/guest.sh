#!/bin/bash
# Guest half of the benchmark suite (bench/suite/run.ts drives it through
# test/support/vm.ts; see bench/README.md). Runs as root in the QEMU guest,
# in the repo, with:
#   KVER DMU_OUT            from the VM harness
#   BASE_MIB                size of the base image at the start of /dev/vda (random data, written by the host)
#   REGION_MIB              size of one cold region: every cold run gets never-touched blocks
#   BLOCK_SECTORS           CoW block size for every system (dscow, dm-snapshot chunk, thin block, qcow2 cluster, nbdkit cow block)
#   RUNTIME REPEAT          fio seconds per run (cap for cold runs), repetitions
#   JOBS                    "name:rw:bs:iodepth ..."
#   SYSTEMS                 "linear snapshot thin dscow dscow-file qcow2 qemu-nbd nbdkit" (subset, in order)
# /dev/vda layout: [0, BASE) base image | [BASE, BASE+COW) raw CoW area | rest: ext4 for image files.
# The raw CoW area holds what in-kernel CoW keeps on a volume: dm-snapshot's
# exceptions, dm-thin's pool, and dscow's image (dscow-file: a file on the ext4).
# A system that cannot be set up writes setup-failed-<sys>.txt and the run goes on.
set -uo pipefail

log() { echo "bench: $*"; }
BS_BYTES=$((BLOCK_SECTORS * 512))
BASE_S=$((BASE_MIB * 2048))
COW_MIB=640
COW_S=$((COW_MIB * 2048))
DISK_S=$(blockdev --getsz /dev/vda)
FS_OFF=$((BASE_S + COW_S))
FS_S=$((DISK_S - FS_OFF))
COWD="dist/bin/cowd.mjs"
ip link set lo up 2>/dev/null || true

modprobe dm-mod
modprobe dm-snapshot
modprobe dm-thin-pool
modprobe nbd nbds_max=4
insmod "kernel/build/$KVER/dmu.ko"

dmsetup create base --table "0 $BASE_S linear /dev/vda 0"
dmsetup create cowarea --table "0 $COW_S linear /dev/vda $BASE_S"
dmsetup create fsarea --table "0 $FS_S linear /dev/vda $FS_OFF"
mkfs.ext4 -q -F -E nodiscard /dev/mapper/fsarea
mkdir -p /mnt/s && mount /dev/mapper/fsarea /mnt/s
export TMPDIR=/mnt/s

fail() { # fail SYS MESSAGE: this peer could not be set up
	log "SETUP FAILED $1: $2"
	echo "$2" >"$DMU_OUT/setup-failed-$1.txt"
}

wait_dmu() { # wait_dmu NAME: device present and its daemon connected
	for _ in $(seq 600); do
		[ -b "/dev/mapper/$1" ] && [ "$(dmsetup status "$1" 2>/dev/null | awk '{print $12}')" = daemon=connected ] && return 0
		sleep 0.1
	done
	return 1
}

wait_nbd() { # wait_nbd nbdN: connected and sized
	for _ in $(seq 300); do
		[ "$(cat "/sys/block/$1/size" 2>/dev/null || echo 0)" -gt 0 ] && return 0
		sleep 0.1
	done
	return 1
}

CPID=""
SRVPID=""
# dscow_image SYS: where that dscow system keeps its image.
dscow_image() { if [ "$1" = dscow ]; then echo /dev/mapper/cowarea; else echo /mnt/s/d.dscow; fi; }
# setup SYS: echo the device path on success.
setup() {
	case "$1" in
	linear)
		dmsetup create b-linear --table "0 $BASE_S linear /dev/mapper/base 0" || return 1
		echo /dev/mapper/b-linear
		;;
	snapshot)
		dd if=/dev/zero of=/dev/mapper/cowarea bs=4k count=1 oflag=direct status=none
		dmsetup create b-snapshot --table "0 $BASE_S snapshot /dev/mapper/base /dev/mapper/cowarea P $BLOCK_SECTORS" || return 1
		echo /dev/mapper/b-snapshot
		;;
	thin)
		# metadata: first 64 MiB of the CoW area; data: the rest.
		dmsetup create thinmeta --table "0 131072 linear /dev/mapper/cowarea 0" || return 1
		dmsetup create thindata --table "0 $((COW_S - 131072)) linear /dev/mapper/cowarea 131072" || return 1
		dd if=/dev/zero of=/dev/mapper/thinmeta bs=4k count=1 oflag=direct status=none
		dmsetup create thinpool --table "0 $((COW_S - 131072)) thin-pool /dev/mapper/thinmeta /dev/mapper/thindata $BLOCK_SECTORS 0 1 skip_block_zeroing" || return 1
		dmsetup message thinpool 0 "create_thin 0" || return 1
		dmsetup create b-thin --table "0 $BASE_S thin /dev/mapper/thinpool 0 /dev/mapper/base" || return 1
		echo /dev/mapper/b-thin
		;;
	dscow | dscow-file)
		# An old header on the area would make create refuse (it never overwrites an image).
		[ "$1" = dscow ] && dd if=/dev/zero of=/dev/mapper/cowarea bs=4k count=1 oflag=direct status=none
		node dist/bin/dscow_tool.mjs -c "$(dscow_image "$1")" /dev/mapper/base -b "$BS_BYTES" >"$DMU_OUT/$1-create.txt" 2>&1 || return 1
		$COWD -p dscow "b-$1" "$(dscow_image "$1")" /dev/mapper/base >"$DMU_OUT/cowd-$1.log" 2>&1 &
		CPID=$!
		wait_dmu "b-$1" || { tail -2 "$DMU_OUT/cowd-$1.log" >&2; return 1; }
		echo "/dev/mapper/b-$1"
		;;
	qcow2)
		qemu-img create -q -f qcow2 -o cluster_size="$BS_BYTES" -b /dev/mapper/base -F raw /mnt/s/q.qcow2 >&2 || return 1
		$COWD -p qcow2 b-qcow2 /mnt/s/q.qcow2 /dev/mapper/base -F raw >"$DMU_OUT/cowd-qcow2.log" 2>&1 &
		CPID=$!
		wait_dmu b-qcow2 || { tail -2 "$DMU_OUT/cowd-qcow2.log" >&2; return 1; }
		echo /dev/mapper/b-qcow2
		;;
	qemu-nbd)
		qemu-img create -q -f qcow2 -o cluster_size="$BS_BYTES" -b /dev/mapper/base -F raw /mnt/s/n.qcow2 >&2 || return 1
		# cache=none: O_DIRECT on the image, like dmu's direct-I/O loop devices (no guest page cache help).
		qemu-nbd -c /dev/nbd0 -f qcow2 --cache=none --aio=native /mnt/s/n.qcow2 >&2 || return 1
		wait_nbd nbd0 || return 1
		echo /dev/nbd0
		;;
	nbdkit)
		nbdkit -f -i 127.0.0.1 -p 10810 --filter=cow file /dev/mapper/base cow-block-size="$BS_BYTES" \
			>"$DMU_OUT/nbdkit.log" 2>&1 &
		SRVPID=$!
		for _ in $(seq 100); do nbd-client -N '' 127.0.0.1 10810 /dev/nbd1 -b 4096 >&2 2>/dev/null && break; sleep 0.2; done
		wait_nbd nbd1 || return 1
		echo /dev/nbd1
		;;
	*) return 1 ;;
	esac
}

# maps_one_by_one: serve the dscow image again with a cowd that answers one
# block per request (SIGTERM commits and removes the idle device first).
maps_one_by_one() {
	kill -TERM "$CPID"
	wait "$CPID" 2>/dev/null
	$COWD -p dscow --max-run 1 b-dscow "$(dscow_image dscow)" /dev/mapper/base >>"$DMU_OUT/cowd-dscow.log" 2>&1 &
	CPID=$!
	wait_dmu b-dscow || log "cowd --max-run 1 did not take b-dscow over"
	# Untimed: a fresh node runs its first few hundred answers unoptimised
	# (slower still under TCG); the cowd it replaces had the fio jobs for that.
	for _ in 1 2; do
		next_region
		fio --name=warmup --filename=/dev/mapper/b-dscow --rw=randread --bs="$BS_BYTES" --iodepth=32 --direct=1 \
			--ioengine=libaio --offset="${off}M" --size="${REGION_MIB}M" --randrepeat=0 --eta=never --output=/dev/null >/dev/null 2>&1
	done
}

teardown() {
	case "$1" in
	linear) dmsetup remove b-linear ;;
	snapshot) dmsetup remove b-snapshot ;;
	thin) dmsetup remove b-thin; dmsetup remove thinpool; dmsetup remove thindata; dmsetup remove thinmeta ;;
	dscow | dscow-file | qcow2)
		[ -n "$CPID" ] && { kill -TERM "$CPID"; wait "$CPID"; }
		dmsetup remove "b-$1" 2>/dev/null
		rm -f /mnt/s/d.dscow /mnt/s/q.qcow2
		;;
	qemu-nbd) qemu-nbd -d /dev/nbd0 >/dev/null; rm -f /mnt/s/n.qcow2 ;;
	nbdkit) nbd-client -d /dev/nbd1 >/dev/null; [ -n "$SRVPID" ] && { kill -TERM "$SRVPID"; wait "$SRVPID"; } ;;
	esac
	CPID=""
	SRVPID=""
	return 0
}

# forget SYS: a dmu target drops every mapping it remembers, as on a fresh
# attach. A cold run must find its region unknown to the kernel: one answer
# may cover a run of up to 4096 blocks (cowd --max-run), so an earlier cold
# read would otherwise have mapped the regions after it.
forget() {
	local cmd
	cmd=$(forget_cmd "$1")
	[ -z "$cmd" ] || $cmd || log "invalidate failed on b-$1"
}
# forget_cmd SYS: the command forget runs for SYS, empty when it has none.
forget_cmd() {
	case "$1" in dscow | dscow-file | qcow2)
		echo "dmsetup message b-$1 0 invalidate 0 $((BASE_S / BLOCK_SECTORS))"
		;;
	esac
}

region_mib=0 # next never-touched region, MiB from the start of the device
# next_region: set off (MiB) to a never-touched region. Not used as $(next_region):
# a command substitution is a subshell, so the counter would never move and
# every "cold" run would read blocks an earlier run already mapped.
next_region() { off=$region_mib; region_mib=$((region_mib + REGION_MIB)); }

# cowd_ticks: CPU time (clock ticks, user + system) of the running cowd, 0 without one.
cowd_ticks() {
	[ -n "$CPID" ] && [ -r "/proc/$CPID/stat" ] || { echo 0; return; }
	# Fields 14 and 15 of stat, counted after the ")" that ends the command name.
	sed 's/.*) //' "/proc/$CPID/stat" | awk '{print $12 + $13}'
}

# fio_workload SYS DEV NAME RW BS IODEPTH OUT: every repetition of one
# workload, each over its own never-touched region, in one fio: three
# stonewalled jobs per repetition (each starts when the one before ends),
# named <pass>.<rep>:
#   cold: one pass over never-touched blocks, capped at RUNTIME; a dmu
#     target forgets its mappings first (forget, as fio's exec_prerun).
#   touch (untimed): every block of the region read or written (as RW
#     does) once, so the warm pass finds all of it touched: a cold pass
#     cut short by the cap (4 KiB random writes) leaves blocks untouched.
#   warm: time based (RUNTIME) over the same blocks.
# One fio, not one per pass: under TCG fio takes 1.5 s to start (it links
# some 60 libraries, read over 9p), which was a third of the suite's time.
fio_workload() {
	local touch=read args=() rep pre
	case "$4" in *write) touch=write ;; esac
	pre=$(forget_cmd "$1")
	for rep in $(seq "$REPEAT"); do
		next_region
		args+=(--name="cold.$rep" --stonewall --offset="${off}M" --rw="$4" --bs="$5" --iodepth="$6" --runtime="$RUNTIME")
		[ -n "$pre" ] && args+=(--exec_prerun="$pre")
		args+=(--name="touch.$rep" --stonewall --offset="${off}M" --rw=$touch --bs="$BS_BYTES" --iodepth=4)
		args+=(--name="warm.$rep" --stonewall --offset="${off}M" --rw="$4" --bs="$5" --iodepth="$6" --runtime="$RUNTIME" --time_based)
	done
	fio --filename="$2" --direct=1 --ioengine=libaio --size="${REGION_MIB}M" \
		--randrepeat=0 --eta=never --output-format=json --output="$7" "${args[@]}" >/dev/null 2>"$7.err"
}

for sys in $SYSTEMS; do
	log "=== $sys"
	t0=$(date +%s%N)
	# Not in $(...): setup starts daemons whose pids teardown needs.
	setup "$sys" >/tmp/dev.txt 2>"$DMU_OUT/setup-$sys.err"
	dev=$(tail -1 /tmp/dev.txt)
	if [ -z "$dev" ] || [ ! -b "$dev" ]; then
		fail "$sys" "$(tail -3 "$DMU_OUT/setup-$sys.err" | tr '\n' ' ')"
		teardown "$sys" 2>/dev/null
		continue
	fi
	echo $((($(date +%s%N) - t0) / 1000000)) >"$DMU_OUT/setup-ms-$sys.txt"
	region_mib=0
	broken=""
	for job in $JOBS; do
		IFS=: read -r name rw bs qd <<<"$job"
		out="$DMU_OUT/fio-$sys-$name.json"
		c0=$(cowd_ticks)
		if ! fio_workload "$sys" "$dev" "$name" "$rw" "$bs" "$qd" "$out"; then
			broken="$name: $(tail -2 "$out.err" | tr '\n' ' ')"
			break
		fi
		if [ -n "$CPID" ]; then
			echo "$name $(($(cowd_ticks) - c0))" >>"$DMU_OUT/cowd-ticks-$sys.txt"
		fi
		log "$sys $name done"
	done
	if [ -n "$broken" ]; then
		fail "$sys" "fio failed: $broken"
		teardown "$sys" 2>/dev/null
		continue
	fi
	# Time to first byte of a cold read: one 4 KiB direct read of a
	# never-touched block, timed by fio itself (submission to completion):
	# timing a whole dd measured mostly its start-up under TCG. One fio,
	# one job per repetition; a dmu target forgets before each, or the
	# first read's run would have mapped the blocks of the next ones.
	next_region
	pre=$(forget_cmd "$sys")
	args=()
	for rep in $(seq "$REPEAT"); do
		args+=(--name="ttfb.$rep" --stonewall --offset=$((off * 1048576 + rep * 4 * BS_BYTES)))
		[ -n "$pre" ] && args+=(--exec_prerun="$pre")
	done
	fio --filename="$dev" --rw=read --bs=4k --size=4k --ioengine=psync --direct=1 \
		--output-format=json --output="$DMU_OUT/ttfb-$sys.json" "${args[@]}" >/dev/null 2>&1 &&
		node -e 'for (const j of JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).jobs) console.log(Math.round(j.read.lat_ns.mean / 1000))' \
			"$DMU_OUT/ttfb-$sys.json" >"$DMU_OUT/ttfb-$sys.txt"
	# Map requests per second cowd sustains: block-sized random reads at depth 32 over never-mapped blocks,
	# counted by the target's miss counter. cowd answers one block per request here (--max-run 1):
	# with runs, the first read would map the whole region and there would be nothing to count.
	case "$sys" in dscow | qcow2)
		[ "$sys" = dscow ] && maps_one_by_one
		for rep in $(seq "$REPEAT"); do
			next_region
			forget "$sys"
			dmsetup status "b-$sys" >>"$DMU_OUT/maps-status-$sys.txt"
			m0=$(dmsetup status "b-$sys" | awk '{print $5}')
			t0=$(date +%s%N)
			# One read per block (bs = block size), so every read is a miss.
			fio --name=maps --filename="$dev" --rw=randread --bs="$BS_BYTES" --iodepth=32 --direct=1 --ioengine=libaio \
				--offset="${off}M" --size="${REGION_MIB}M" --runtime="$RUNTIME" --randrepeat=0 --eta=never \
				--output-format=json --output="$DMU_OUT/fio-maps-$sys-$rep.json" >/dev/null 2>"$DMU_OUT/fio-maps-$sys-$rep.err"
			t1=$(date +%s%N)
			dmsetup status "b-$sys" >>"$DMU_OUT/maps-status-$sys.txt"
			m1=$(dmsetup status "b-$sys" | awk '{print $5}')
			echo "$((m1 - m0)) $(((t1 - t0) / 1000000))" >>"$DMU_OUT/maps-$sys.txt"
		done
		dmsetup status "b-$sys" >"$DMU_OUT/status-$sys.txt"
		;;
	esac
	teardown "$sys" || fail "$sys" "teardown failed"
done

# cowd's resident memory for a 1 TiB virtual dscow disk (sparse base and image on ext4).
if [[ " $SYSTEMS " == *" dscow "* ]]; then
	truncate -s 1T /mnt/s/big.base
	if node dist/bin/dscow_tool.mjs -c /mnt/s/big.dscow /mnt/s/big.base -b "$BS_BYTES" >/dev/null 2>"$DMU_OUT/big.err"; then
		$COWD -p dscow b-big /mnt/s/big.dscow /mnt/s/big.base >"$DMU_OUT/cowd-big.log" 2>&1 &
		CPID=$!
		if wait_dmu b-big; then
			sleep 1
			ps -o rss= -p "$CPID" | tr -d ' ' >"$DMU_OUT/rss-idle.txt"
			fio --name=rss --filename=/dev/mapper/b-big --rw=randread --bs=4k --iodepth=32 --direct=1 --ioengine=libaio \
				--runtime="$RUNTIME" --time_based --randrepeat=0 --eta=never --output=/dev/null >/dev/null 2>&1
			ps -o rss= -p "$CPID" | tr -d ' ' >"$DMU_OUT/rss-load.txt"
		else
			fail rss "cowd did not attach the 1 TiB dscow: $(tail -1 "$DMU_OUT/cowd-big.log")"
		fi
		kill -TERM "$CPID"
		wait "$CPID"
		dmsetup remove b-big 2>/dev/null
	else
		fail rss "dscow_tool -c 1 TiB: $(tail -1 "$DMU_OUT/big.err")"
	fi
fi

umount /mnt/s
log done
