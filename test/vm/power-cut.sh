# Power-cut crash consistency of a dscow disk served by cowd (guest script
# of test/vm/power-cut.test.ts). Every write that reaches the disk holding
# the image file (/dev/vda) is recorded by dm-log-writes on /dev/vdb. The
# base is an ext4 with files; a workload on that ext4 through the dscow
# disk writes records, fsyncs each one,
# and only then puts a mark "rec-N" in the log. Afterwards the log is
# replayed onto /dev/vdc up to sampled flush/FUA entries (the states a
# power cut can leave: nothing after a flush is promised), and at each one
# the outer file system, the image (through cowd) and the inner ext4 must
# check clean, with every record whose mark came before the point intact.
# Each check state is a throw-away dm-snapshot of vdc (COW on /dev/vdd), so
# replay goes forward incrementally and checks never disturb it.
source test/vm/lib/checks.sh
source test/vm/lib/ext4-base.sh
load_dmu || exit 10
modprobe dm-log-writes && modprobe dm-snapshot || exit 11
# cpt: a check that runs once per cut point (the host counts these apart).
cpt() { check "$@"; }

REPLAY="node dist/tools/log-writes/replay.js"
COWD="dist/bin/cowd.mjs"
W=/tmp/pc # guest RAM: the list of fsynced records lives outside the disks under test
D=/mnt/d  # the image's file system; the same path during the workload and the checks
T=/mnt/t  # the ext4 inside the dscow disk
mkdir -p $W $D $T
RECORDS=${PC_RECORDS:-300}
NPOINTS=${PC_POINTS:-24}
SZ=$(blockdev --getsz /dev/vda)
CP=

start_cowd() { # start_cowd NAME: serve $D/img.dscow, pid in CP
	$COWD -p dscow "$1" $D/img.dscow >>"$DMU_OUT/cowd-$1.log" 2>&1 &
	CP=$!
	wait_for attached "$1"
}
stop_cowd() { # stop_cowd NAME: SIGTERM, exit 0, device gone
	[ -n "$CP" ] || return 1
	kill -TERM "$CP" && wait "$CP"
	local rc=$?
	CP=
	wait_for gone "$1" && [ $rc -eq 0 ]
}

# --- workload, logged -------------------------------------------------------
dmsetup create lw --table "0 $SZ log-writes /dev/vda /dev/vdb"
check "dm-log-writes over vda" test -b /dev/mapper/lw
mkfs.ext4 -q -F -E nodiscard /dev/mapper/lw && mount /dev/mapper/lw $D
# The base holds an ext4 with files: the dscow disk starts as that file
# system, so a block whose base contents are lost (a bitmap bit committed
# before its copy-first data) shows as fsck errors or damaged base files.
check "base: 64 MiB ext4 with 24 files" make_ext4_base $D/base.img 64M 40000 $W/base.sums
check "dscow image created over a 64 MiB base" node dist/bin/dmu.mjs create -f dscow -b $D/base.img $D/img.dscow
sync
check "cowd attaches the image" start_cowd pc
mount /dev/mapper/pc $T && sync -f $T
dmsetup message lw 0 mark ready
check "the base's ext4 mounted from the dscow disk" mountpoint -q $T

# Record N: a new file of 3-21 KB, fsynced with its directory, then a line
# appended to one growing journal file, fsynced; only then the mark. A copy
# of each record stays in guest RAM ($W/rec-N) to compare against.
workload() {
	local n
	for n in $(seq "$RECORDS"); do
		head -c $(((n % 7 + 1) * 3000)) /dev/urandom >$W/rec-$n
		dd if=$W/rec-$n of=$T/rec-$n bs=64k conv=fsync status=none && sync $T || return 1
		echo "rec-$n" | dd of=$T/journal oflag=append conv=notrunc,fsync status=none || return 1
		dmsetup message lw 0 mark "rec-$n" || return 1
	done
	(cd $W && sha256sum rec-*) >$W/sums
}
t0=$(date +%s)
check "workload: $RECORDS records fsynced and marked" workload
echo "workload: $(($(date +%s) - t0)) s" >>"$DMU_OUT/times.txt"
umount $T
check "cowd stops cleanly after the workload" stop_cowd pc
umount $D
check "log device closed" dmsetup remove lw

# --- the log -----------------------------------------------------------------
$REPLAY --log /dev/vdb --list-flushes >$W/flushes 2>>"$DMU_OUT/replay.log"
$REPLAY --log /dev/vdb --list-marks >$W/marks 2>>"$DMU_OUT/replay.log"
cp $W/flushes $W/marks "$DMU_OUT/"
READY=$(awk '$2 == "ready" { print $1 }' $W/marks)
check "log has every record's mark" eq "$(grep -c ' rec-' $W/marks)" "$RECORDS"
# Flush points after the inner file system existed, NPOINTS of them evenly
# spread, always including the last one (after the clean shutdown).
awk -v r="${READY:-999999999}" '$1 > r' $W/flushes >$W/after
check "at least $NPOINTS flush points after the disk was ready" test "$(wc -l <$W/after)" -ge "$NPOINTS"
awk -v k="$NPOINTS" '{ a[NR] = $1 } END { for (i = 1; i <= k && i <= NR; i++) print a[int((i * NR + k - 1) / k)] }' $W/after | uniq >$W/points

# --- the checks at every cut point -------------------------------------------
DONE=0 # entries already on vdc
replay_to() { # replay_to ENTRY: vdc = the disk just after log entry ENTRY
	$REPLAY --log /dev/vdb --replay /dev/vdc --start $DONE --limit $(($1 + 1)) 2>>"$DMU_OUT/replay.log" || return 1
	DONE=$(($1 + 1))
}
outer_up() { # a snapshot of vdc, journal recovered, e2fsck clean, mounted at $D
	dmsetup create pcs --table "0 $SZ snapshot /dev/vdc /dev/vdd N 16" || return 1
	mount /dev/mapper/pcs $D && umount $D || return 1
	e2fsck -fn /dev/mapper/pcs >>"$DMU_OUT/fsck.log" 2>&1 || return 1
	mount /dev/mapper/pcs $D
}
inner_clean() { # journal recovered by a mount, then e2fsck clean
	mount /dev/mapper/pcr $T && umount $T || return 1
	e2fsck -fn /dev/mapper/pcr >>"$DMU_OUT/fsck.log" 2>&1
}
records_ok() { # records_ok ENTRY: the base's files and every record marked before ENTRY intact
	local need bad=0
	awk -v e="$1" '$1 < e && $2 ~ /^rec-/ { print $2 }' $W/marks >$W/need
	awk 'NR == FNR { want[$1] = 1; next } $2 in want' $W/need $W/sums >$W/need.sums
	mount -o ro /dev/mapper/pcr $T || return 1
	(cd $T && sha256sum -c --quiet $W/base.sums) >>"$DMU_OUT/records.log" 2>&1 || { bad=1; echo "entry $1: base files damaged" >>"$DMU_OUT/records.log"; }
	if [ -s $W/need.sums ]; then (cd $T && sha256sum -c --quiet $W/need.sums) >>"$DMU_OUT/records.log" 2>&1 || bad=1; fi
	# The journal holds every needed line (grep -c counts its lines that are needed).
	[ "$(grep -cxFf $W/need $T/journal)" = "$(wc -l <$W/need)" ] || { bad=1; echo "entry $1: journal lines missing" >>"$DMU_OUT/records.log"; }
	echo "entry $1: $(wc -l <$W/need) records required, bad=$bad" >>"$DMU_OUT/points.txt"
	umount $T
	[ $bad -eq 0 ]
}
teardown() { # always leaves nothing behind, fails if anything was left running
	local rc=0
	mountpoint -q $T && { umount $T || rc=1; }
	if [ -n "$CP" ]; then stop_cowd pcr || rc=1; fi
	gone pcr || { dmsetup remove pcr; rc=1; }
	mountpoint -q $D && { umount $D || rc=1; }
	dmsetup info pcs >/dev/null 2>&1 && { dmsetup remove pcs || rc=1; }
	no_loops && [ $rc -eq 0 ]
}

i=0
t0=$(date +%s)
for e in $(cat $W/points); do
	i=$((i + 1))
	cpt "point $i (entry $e): replayed" replay_to "$e"
	cpt "point $i: image file system recovers and checks clean" outer_up
	cpt "point $i: cowd attaches the crashed image" start_cowd pcr
	cpt "point $i: ext4 on the dmu disk checks clean" inner_clean
	cpt "point $i: base files and every record fsynced before the cut intact" records_ok "$e"
	cpt "point $i: torn down" teardown
done
echo "points: $i in $(($(date +%s) - t0)) s" >>"$DMU_OUT/times.txt"
check "cut points replayed: $i (need 20)" test "$i" -ge 20
last=$(tail -1 "$DMU_OUT/points.txt" | awk '{ print $3 }')
check "the last point required every record" eq "$last" "$RECORDS"
exit 0
