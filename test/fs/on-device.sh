#!/bin/bash
# Run file-system stress tests on a block device (a dmu disk, typically):
#   test/fs/on-device.sh DEVICE [TEST...]     TEST: dbench bonnie fio-verify stress-ng
# Makes ext4 on DEVICE, mounts it, runs each test (each a script next to
# this one taking the mount point), unmounts, and requires e2fsck -fn clean.
# Sizes and durations are small (FS_SCALE=N multiplies them): the point is
# correctness of the block layer under real file-system load, not speed.
# Prints "ok - <test>" / "not ok - <test>" lines; exits non-zero on failure.
set -uo pipefail
export PATH=$PATH:/usr/sbin:/sbin
here=$(cd "$(dirname "$0")" && pwd)
dev=${1:?usage: on-device.sh DEVICE [TEST...]}
shift
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(dbench bonnie fio-verify stress-ng)
mnt=$(mktemp -d /tmp/dmu-fs.XXXXXX)
fail=0

mkfs.ext4 -q -F "$dev" || { echo "not ok - mkfs.ext4 $dev"; exit 1; }
mount "$dev" "$mnt" || { echo "not ok - mount $dev"; exit 1; }
for t in "${tests[@]}"; do
	start=$(date +%s)
	if "$here/$t.sh" "$mnt" >"$mnt.$t.log" 2>&1; then
		echo "ok - $t ($(($(date +%s) - start)) s)"
	else
		echo "not ok - $t # see $mnt.$t.log"
		tail -20 "$mnt.$t.log" | sed 's/^/#   /'
		fail=1
	fi
	rm -rf "${mnt:?}"/*
done
umount "$mnt"
if e2fsck -fn "$dev" >"$mnt.fsck.log" 2>&1; then
	echo "ok - e2fsck clean"
else
	echo "not ok - e2fsck # see $mnt.fsck.log"
	fail=1
fi
rmdir "$mnt"
exit $fail
