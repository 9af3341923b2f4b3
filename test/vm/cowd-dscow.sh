# Guest script of test/vm/cowd-dscow.test.ts (run in /work/main as root, DMU_OUT and KVER set).
set -uo pipefail
export PATH=$PATH:/usr/sbin:/sbin
RES=$DMU_OUT/results.txt
: >"$RES"
check() { local n=$1; shift; if "$@" >>$DMU_OUT/checks.log 2>&1; then echo "ok - $n" >>"$RES"; else echo "not ok - $n # $*" >>"$RES"; fi; }
eq() { [ "$1" = "$2" ] || { echo "expected '$2', got '$1'"; return 1; }; }
copies() { dmsetup status "$1" | awk '{ print $7 }'; }
COWD="dist/bin/cowd.mjs"
TOOL="node dist/bin/dscow_tool.mjs"
wait_dev() { for i in $(seq 300); do [ -b /dev/mapper/$1 ] && [ "$(dmsetup status $1 | awk '{print $12}')" = daemon=connected ] && return 0; sleep 0.1; done; return 1; }
start() { # start NAME IMAGE [args]: cowd in the background, pid in CP
	local n=$1; shift
	$COWD -p dscow "$n" "$@" >>$DMU_OUT/cowd-$n.log 2>&1 &
	CP=$!
	wait_dev "$n"
}
gone() { ! dmsetup info "$1" >/dev/null 2>&1; }

modprobe dm-mod; modprobe loop
mkfs.ext4 -q -F /dev/vda && mkdir -p /mnt/d && mount /dev/vda /mnt/d
BS=65536
head -c $((48 * 1024 * 1024)) /dev/urandom > /mnt/d/base.img
sha256sum < /mnt/d/base.img > /mnt/d/base.sha
$TOOL -c /mnt/d/a.dscow /mnt/d/base.img > $DMU_OUT/create.txt

# Before the module is loaded: the hint to build and load it.
out=$($COWD -p dscow t1 /mnt/d/a.dscow 2>&1); rc=$?
check "no module: refused" eq "$rc" 1
check "no module: says how to load it" grep -q 'insmod kernel/build' <<<"$out"
insmod kernel/build/$KVER/dmu.ko

check "cowd starts" start t1 /mnt/d/a.dscow
check "device reads as the base" cmp /dev/mapper/t1 /mnt/d/base.img
check "table names the key and 64 KiB blocks" grep -q 'userspace t1 128 ' <(dmsetup table t1)

# Partial writes on never-written blocks keep the base bytes around them.
cp /mnt/d/base.img /tmp/expect.img
head -c 1536 /dev/urandom > /tmp/patch
c0=$(copies t1)
dd if=/tmp/patch of=/dev/mapper/t1 bs=512 seek=$((5 * BS / 512 + 3)) oflag=direct conv=notrunc status=none
dd if=/tmp/patch of=/tmp/expect.img bs=512 seek=$((5 * BS / 512 + 3)) conv=notrunc status=none
check "partial write: one copy-first" eq "$(copies t1)" $((c0 + 1))
# Whole-block write: no copy.
head -c $BS /dev/urandom > /tmp/blk
dd if=/tmp/blk of=/dev/mapper/t1 bs=$BS seek=9 oflag=direct conv=notrunc status=none
dd if=/tmp/blk of=/tmp/expect.img bs=$BS seek=9 conv=notrunc status=none
check "whole-block write: no copy" eq "$(copies t1)" $((c0 + 1))
echo 3 > /proc/sys/vm/drop_caches
check "device = base + writes" cmp /dev/mapper/t1 /tmp/expect.img
check "base unchanged after writes" sha256sum -c --status <(sed 's|-$|/mnt/d/base.img|' /mnt/d/base.sha)

# Refusals.
dmsetup create other --table "0 8 zero"
out=$($COWD -p dscow other /mnt/d/base.img 2>&1); rc=$?
check "name of a foreign device: refused" eq "$rc" 1
check "name of a foreign device: says so" grep -q 'exists and is not a dm-userspace disk' <<<"$out"
dmsetup remove other
out=$($COWD -p dscow t1b /mnt/d/a.dscow 2>&1); rc=$?
check "image served by another cowd: refused" eq "$rc" 1
check "image served by another cowd: says so" grep -q 'already open read-write by cowd pid' <<<"$out"

# ext4 on the CoW disk, files, clean detach.
mkfs.ext4 -q -F /dev/mapper/t1 && mkdir -p /mnt/t && mount /dev/mapper/t1 /mnt/t
for i in 1 2 3 4 5 6; do head -c $((i * 700 * 1024)) /dev/urandom > /mnt/t/f$i; done
mkdir -p /mnt/t/dir && cp -a /usr/share/doc/fio /mnt/t/dir/ 2>/dev/null || true
(cd /mnt/t && find . -type f -print0 | sort -z | xargs -0 sha256sum) > /tmp/files.sha
umount /mnt/t
kill -TERM $CP; wait $CP; rc=$?
check "SIGTERM: cowd exits 0" eq "$rc" 0
check "SIGTERM: device removed" gone t1
check "SIGTERM: loop devices gone" eq "$(losetup -a | wc -l)" 0
check "image marked clean" grep -q '^Clean: *yes' <($TOOL -i /mnt/d/a.dscow)
check "dmu check clean" node dist/bin/dmu.mjs check /mnt/d/a.dscow
check "base unchanged after mkfs and files" sha256sum -c --status <(sed 's|-$|/mnt/d/base.img|' /mnt/d/base.sha)

check "reattach" start t1 /mnt/d/a.dscow
mount /dev/mapper/t1 /mnt/t
check "files intact after reattach" bash -c "cd /mnt/t && sha256sum -c --quiet /tmp/files.sha"
umount /mnt/t
check "e2fsck -fn clean" e2fsck -fn /dev/mapper/t1
# In use at SIGTERM: left in place, then taken over by a new cowd.
mount /dev/mapper/t1 /mnt/t
kill -TERM $CP; wait $CP; rc=$?
check "busy at SIGTERM: cowd exits 0" eq "$rc" 0
check "busy at SIGTERM: device left in place" dmsetup info t1
check "busy device taken over" start t1 /mnt/d/a.dscow
check "files readable after takeover" bash -c "cd /mnt/t && sha256sum -c --quiet /tmp/files.sha"
umount /mnt/t
kill -TERM $CP; wait $CP

# kill -9 in the middle of fio --verify; a new cowd takes over; fio finishes clean.
$TOOL -c /mnt/d/b.dscow /mnt/d/base.img >/dev/null
start t2 /mnt/d/b.dscow
FIO="fio --name=v --filename=/dev/mapper/t2 --size=24M --rw=randwrite --bs=16k --direct=1 --ioengine=psync --verify=crc32c --verify_fatal=1 --randseed=7"
$FIO --output=$DMU_OUT/fio-kill.txt >/dev/null 2>&1 &
FP=$!
sleep 4
kill -9 $CP; wait $CP 2>/dev/null
check "after kill -9: daemon waiting" bash -c "dmsetup status t2 | grep -q daemon=waiting"
check "takeover after kill -9" start t2 /mnt/d/b.dscow
wait $FP; rc=$?
check "fio verify across kill -9: no error" eq "$rc" 0
kill -TERM $CP; wait $CP
check "t2 removed" gone t2
check "dmu check after kill -9 run: no corruption" bash -c 'node dist/bin/dmu.mjs check /mnt/d/b.dscow; [ $? -ne 2 ]'
start t2 /mnt/d/b.dscow
check "fio data persisted across kill -9, takeover and detach" $FIO --verify_only --output=$DMU_OUT/fio-reverify.txt
kill -TERM $CP; wait $CP

# SIGTERM right after first writes: the kernel has written the blocks and
# may still have their ALLOCATED reports queued. cowd serves them before it
# removes the device, or the data would be gone at the next attach.
lost=0
for round in 1 2 3 4 5 6; do
	rm -f /mnt/d/r.dscow
	$TOOL -c /mnt/d/r.dscow /mnt/d/base.img >/dev/null
	start t4 /mnt/d/r.dscow
	head -c $((24 << 20)) /dev/urandom > /tmp/round
	dd if=/tmp/round of=/dev/mapper/t4 bs=1M oflag=direct status=none
	kill -TERM $CP; wait $CP
	start t4 /mnt/d/r.dscow
	cmp -n $((24 << 20)) /tmp/round /dev/mapper/t4 >/dev/null || lost=$((lost + 1))
	kill -TERM $CP; wait $CP
done
check "first writes kept across SIGTERM right after them (6 rounds)" eq "$lost" 0

# The seed's test plan: file-system load on the CoW disk.
# A roomier disk than the 48 MiB one above: 384 MiB base, random at its start, sparse after.
truncate -s 384M /mnt/d/base2.img
head -c $((16 * 1024 * 1024)) /dev/urandom | dd of=/mnt/d/base2.img conv=notrunc status=none
sha256sum < /mnt/d/base2.img > /mnt/d/base2.sha
$TOOL -c /mnt/d/c.dscow /mnt/d/base2.img >/dev/null
start t3 /mnt/d/c.dscow
test/fs/on-device.sh /dev/mapper/t3 > $DMU_OUT/fs.txt 2>&1
while read -r line; do
	case $line in
	"ok - "*) echo "ok - fs: ${line#ok - }" >>"$RES" ;;
	"not ok - "*) echo "not ok - fs: ${line#not ok - }" >>"$RES" ;;
	esac
done < $DMU_OUT/fs.txt
kill -TERM $CP; wait $CP
check "base unchanged at the end" sha256sum -c --status <(sed 's|-$|/mnt/d/base.img|' /mnt/d/base.sha)
check "second base unchanged after the fs load" sha256sum -c --status <(sed 's|-$|/mnt/d/base2.img|' /mnt/d/base2.sha)
dmsetup status 2>/dev/null
exit 0
