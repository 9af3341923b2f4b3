# One boot of a power-kill run (guest script of test/vm/power-kill.test.ts).
# /dev/vda is a host file kept across boots: an ext4 (the "outer" file
# system) holding a 256 MiB base (itself an ext4 with files) and a dscow
# image over it, served by cowd as /dev/mapper/pk. The ext4 seen through
# the dscow disk is the base's own (the "inner" file system).
#
# PK_MODE=setup  (boot 1)   make all that, then the cut window.
# PK_MODE=cut    (boot 2..) recover and check the state the last kill left,
#                           then the cut window.
# PK_MODE=final  (last)     recover and check, then a clean detach and checks.
#
# The cut window starts when $DMU_OUT/cut-now appears; the host SIGKILLs
# QEMU a random delay later. In it: with PK_RESTART=1 the inner fs is
# unmounted, cowd stopped (commit, clean mark), started again and the fs
# mounted again (the setup boot starts cowd there too); then records are
# written and fsynced until the kill (test/vm/power-kill-records.ts; the ids
# it acknowledged are in $DMU_OUT/acked.txt). $DMU_OUT/phases.txt has the
# steps with the guest's uptime; its last line is the one the kill hit.
#
# Check functions: scheck (setup only), rcheck (recovery, in cut and final
# boots), fcheck (final only): the host counts each kind.
source test/vm/lib/checks.sh
source test/vm/lib/ext4-base.sh
scheck() { check "$@"; }
rcheck() { check "$@"; }
fcheck() { check "$@"; }
load_dmu || exit 10

DMU="node dist/bin/dmu.mjs"
COWD="dist/bin/cowd.mjs"
RECORDS="node dist/test/vm/power-kill-records.js"
D=/mnt/d # the outer fs
T=/mnt/t # the inner fs (through the dscow disk)
W=/tmp/pk
mkdir -p $D $T $W
MODE=${PK_MODE:?}
CUT=${PK_CUT:?}
EXPECT=${PK_EXPECT:?} # host file: the ids acknowledged before this boot
CP=
RP=
phase() { echo "$(cut -d' ' -f1 /proc/uptime) $1" >>"$DMU_OUT/phases.txt"; }
# wait_long CMD...: poll up to 240 s (node start-up under a loaded TCG host).
wait_long() {
	local i
	for i in $(seq 2400); do "$@" && return 0; sleep 0.1; done
	return 1
}

start_cowd() { # cowd on the image, pid in CP
	$COWD -p dscow pk $D/img.dscow >>"$DMU_OUT/cowd-pk.log" 2>&1 &
	CP=$!
	wait_long attached pk
}
stop_cowd() { # SIGTERM, exit 0, device gone
	[ -n "$CP" ] || return 1
	kill -TERM "$CP" && wait "$CP"
	local rc=$?
	CP=
	wait_for gone pk && [ $rc -eq 0 ]
}
# The image checked as `dmu check` does: no corruption. Leaks (exit 3) are
# what a cut between a block's data and its commit leaves
# (src/cowd/README.md), so they are allowed after a cut.
CHECKED="$DMU_OUT/dmu-check-cut$((CUT - 1)).txt"
cut_image_ok() {
	wait_long test -e "$CHECKED.done" || return 1
	local rc
	rc=$(sed -n 's/^rc //p' "$CHECKED.done")
	echo "cut$((CUT - 1)) $rc" >>"$DMU_OUT/dmu-check.rc"
	[ "$rc" = 0 ] || [ "$rc" = 3 ]
}
image_rc() { # image_rc NAME: the CLI's exit status, logged
	$DMU check $D/img.dscow >"$DMU_OUT/dmu-check-$1.txt" 2>&1
	local rc=$?
	echo "$1 $rc" >>"$DMU_OUT/dmu-check.rc"
	return $rc
}
image_ok() { image_rc "$1"; local rc=$?; [ $rc -eq 0 ] || [ $rc -eq 3 ]; }
fsck_ok() { e2fsck -fn "$1" >>"$DMU_OUT/fsck.log" 2>&1; }
base_ok() { (cd $T && sha256sum -c --quiet $D/base.sums) >>"$DMU_OUT/base-check.log" 2>&1; }
verify_ok() {
	wait_long test -e "$DMU_OUT/verify.txt.done" &&
		grep -q ' missing 0 bad 0 log-missing 0$' "$DMU_OUT/verify.txt.done"
}

# The records process (one node start per boot, started first): checks the
# image, then the acknowledged records, then writes new ones; each step
# waits for its file in $W.
start_records() { # start_records [ARGS...]
	$RECORDS --dir $T --cut "$CUT" --expect "$EXPECT" --verify-out "$DMU_OUT/verify.txt" "$@" \
		>>"$DMU_OUT/records.log" 2>&1 &
	RP=$!
}
WRITE_ARGS=(--ack "$DMU_OUT/acked.txt" --go $W/go)
# window: from here on the host may kill QEMU at any moment.
window() {
	phase window
	touch "$DMU_OUT/cut-now"
	if [ "$1" = restart ]; then
		phase umount
		umount $T
		phase stop-cowd
		stop_cowd
	fi
	if [ "$1" != keep ]; then
		phase start-cowd
		start_cowd
		phase mount
		mount /dev/mapper/pk $T
	fi
	phase records
	touch $W/go
	wait "$RP"
	phase not-killed
	echo "not killed: the records process ended" >&2
	exit 1
}

if [ "$MODE" = setup ]; then
	phase setup
	start_records "${WRITE_ARGS[@]}"
	scheck "outer fs made and mounted" bash -c "mkfs.ext4 -q -F /dev/vda && mount /dev/vda $D"
	scheck "base: 256 MiB ext4 with 24 files" make_ext4_base $D/base.img 256M 20000 $D/base.sums
	scheck "dscow image created over the base" $DMU create -f dscow -b $D/base.img $D/img.dscow
	sync
	scheck "records process ready (nothing to check yet)" verify_ok
	window start
fi

# --- recovery: the state the last kill left ----------------------------------
phase recover
if [ "$MODE" = cut ]; then
	start_records --image $D/img.dscow --check-go $W/check-go --check-out "$CHECKED" --verify-go $W/verify-go "${WRITE_ARGS[@]}"
else
	start_records --image $D/img.dscow --check-go $W/check-go --check-out "$CHECKED" --verify-go $W/verify-go
fi
# The outer fs is ext4's own business: mounted here (journal replay) and
# checked with e2fsck once, in the final boot.
rcheck "outer fs: mounted, journal replayed" mount /dev/vda $D
phase dmu-check
touch $W/check-go
rcheck "image: dmu check finds no corruption after the cut (0 or 3)" cut_image_ok
phase attach
rcheck "cowd attaches the cut image" start_cowd
phase inner-fsck
rcheck "inner fs: journal replayed by a mount" bash -c "mount /dev/mapper/pk $T && umount $T"
rcheck "inner fs: e2fsck -fn clean" fsck_ok /dev/mapper/pk
mount /dev/mapper/pk $T
phase verify
rcheck "base files intact" base_ok
touch $W/verify-go
rcheck "every acknowledged record present, whole, and in the log" verify_ok

if [ "$MODE" = cut ]; then
	if [ "${PK_RESTART:-0}" = 1 ]; then window restart; else window keep; fi
fi

# --- final: clean detach ------------------------------------------------------
phase final
wait "$RP"
umount $T
fcheck "cowd stops cleanly" stop_cowd
fcheck "image: dmu check after a clean detach: no corruption" image_ok final
fcheck "leaks repaired" bash -c "$DMU check -r leaks $D/img.dscow >>$DMU_OUT/dmu-check-repair.txt 2>&1; [ \$? -ne 2 ]"
fcheck "image: dmu check clean (exit 0) after the repair" image_rc repaired
fcheck "reattach after the repair" start_cowd
fcheck "inner fs: e2fsck -fn clean after the repair" fsck_ok /dev/mapper/pk
mount /dev/mapper/pk $T
fcheck "base files intact after the repair" base_ok
mv "$DMU_OUT/verify.txt.done" "$DMU_OUT/verify-recovery.txt"
$RECORDS --dir $T --cut "$CUT" --expect "$EXPECT" --verify-out "$DMU_OUT/verify.txt" >>"$DMU_OUT/records.log" 2>&1
fcheck "every acknowledged record intact after the repair" verify_ok
umount $T
fcheck "cowd stops cleanly at the end" stop_cowd
umount $D
fcheck "outer fs: e2fsck -fn clean after all the cuts" fsck_ok /dev/vda
exit 0
