# A dscow image on a block device (an LVM volume, a partition) instead of
# a file: no loop device and no file system under the data path. Guest
# script of test/vm/dscow-device.test.ts. The volume starts full of random
# bytes, so any read of a never-written part of it shows up.
source test/vm/lib/checks.sh
load_dmu || exit 10
MIB=2048 # sectors
BS=65536
dmsetup create base --table "0 $((64 * MIB)) linear /dev/vda 0"
dmsetup create vol --table "0 $((112 * MIB)) linear /dev/vda $((64 * MIB))"
dmsetup create small --table "0 $((8 * MIB)) linear /dev/vda $((176 * MIB))"
head -c 64M /dev/urandom >/dev/mapper/base
head -c 112M /dev/urandom >/dev/mapper/vol
sha256sum </dev/mapper/base >/tmp/base.sha
base_same() { sha256sum </dev/mapper/base | cmp -s - /tmp/base.sha; }
DMU="node dist/bin/dmu.mjs"

out=$($DMU create -f dscow -b /dev/mapper/base /dev/mapper/small 2>&1)
check "too small a device: refused" eq $? 1
check "too small a device: says what it needs" grep -q 'the device holds 8388608 bytes, the image needs' <<<"$out"
# 96 MiB over a 64 MiB base: blocks past 64 MiB have nothing to copy.
check "create on a device" $DMU create -f dscow -b /dev/mapper/base /dev/mapper/vol 96M
out=$($DMU create -f dscow -b /dev/mapper/base /dev/mapper/vol 96M 2>&1)
check "create over an image: refused" eq $? 1
check "create over an image: says so" grep -q 'already holds a dscow image' <<<"$out"

CP=
attach() { dist/bin/cowd.mjs -p dscow t "$@" 2>>"$DMU_OUT/cowd.log" & CP=$!; wait_for attached t; }
detach() { kill "$CP" && wait "$CP" && wait_for gone t; }
check "cowd attaches the device" attach /dev/mapper/vol
check "no loop device under it" no_loops
check "reads the base" cmp -n $((64 << 20)) /dev/mapper/t /dev/mapper/base
check "reads zeros past the base" cmp -i $((64 << 20)):0 -n $((32 << 20)) /dev/mapper/t /dev/zero
DM_T=/dev/$(basename "$(readlink -f /sys/dev/block/"$(dmsetup info -c --noheadings -o major,minor vol | tr -d ' ')")")
out=$(dist/bin/cowd.mjs -p dscow t2 "$DM_T" 2>&1)
check "same device by another name: refused" grep -q 'already open read-write by cowd pid' <<<"$out"

# Partial writes: past the base (no copy: the block must read zeros, not
# the volume's old bytes) and inside it (the base's bytes around).
head -c 1536 /dev/urandom >/tmp/patch
put() { dd if=/tmp/patch of="$1" bs=512 seek="$2" oflag=direct conv=notrunc status=none; }
block() { dd if="$1" bs=$BS skip="$2" count=1 iflag=direct status=none; }
head -c $BS /dev/zero >/tmp/want-zero
dd if=/tmp/patch of=/tmp/want-zero bs=512 seek=3 conv=notrunc status=none
block /dev/mapper/base 7 >/tmp/want-base
dd if=/tmp/patch of=/tmp/want-base bs=512 seek=3 conv=notrunc status=none
put /dev/mapper/t $((1300 * BS / 512 + 3))
put /dev/mapper/t $((7 * BS / 512 + 3))
check "partial write past the base: zeros around it" cmp <(block /dev/mapper/t 1300) /tmp/want-zero
check "partial write in the base: base bytes around it" cmp <(block /dev/mapper/t 7) /tmp/want-base

mkfs.ext4 -q -F /dev/mapper/t && mkdir -p /mnt/t && mount /dev/mapper/t /mnt/t
for i in $(seq 20); do head -c 1M /dev/urandom >/mnt/t/f$i; done
(cd /mnt/t && sha256sum f*) >/tmp/sums
umount /mnt/t
dd if=/dev/mapper/t of=/tmp/disk.img bs=1M iflag=direct status=none
check "detach: cowd exits 0, device gone" detach
check "dmu check: clean" $DMU check /dev/mapper/vol
check "dmu info: the device's size is all used" grep -q "\"actual-size\": $((112 << 20))" <($DMU info --output json /dev/mapper/vol)
check "base unchanged" base_same
# Read back outside the kernel: what the kernel wrote, not a stale page
# cache of the device (the zeroed block above went through the page cache).
check "dmu convert to raw = what the disk read" bash -c "$DMU convert -f dscow -O raw /dev/mapper/vol /tmp/out.raw && cmp /tmp/out.raw /tmp/disk.img"
check "reattach" attach /dev/mapper/vol
check "files intact" bash -c "mount /dev/mapper/t /mnt/t && (cd /mnt/t && sha256sum -c --quiet /tmp/sums) && umount /mnt/t"
check "e2fsck -fn clean" e2fsck -fn /dev/mapper/t
check "second detach" detach
