#!/bin/bash
#
# The dmu demo: a copy-on-write disk over a read-only base, end to end.
# Runs on any host with device-mapper and the dmu module (or in the test VM
# through `npm run demo`). Needs root. Leaves nothing behind.
#
#   1. make a 256 MiB base image with a file system and a file on it
#   2. create a dscow overlay over it           (dscow_tool -c)
#   3. attach it as /dev/mapper/dmu-demo         (cowd -p dscow)
#   4. write files through the overlay, detach
#   5. show the base is unchanged and the data is back after reattaching
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
node=${NODE:-node}
dmu() { "$node" "$repo/dist/bin/dmu.mjs" "$@"; }
dscow_tool() { "$node" "$repo/dist/bin/dscow_tool.mjs" "$@"; }
work=$(mktemp -d /tmp/dmu-demo.XXXXXX)
mnt=$work/mnt
name=dmu-demo
step() { printf '\n== %s\n' "$*"; }
cleanup() {
	umount "$mnt" 2>/dev/null || true
	[ -n "${COWD:-}" ] && kill "$COWD" 2>/dev/null && wait "$COWD" 2>/dev/null
	dmsetup remove "$name" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
attach() {
	"$node" --jitless --no-expose-wasm "$repo/dist/bin/cowd.mjs" -p dscow "$name" "$work/disk.dscow" \
		2>>"$work/cowd.log" &
	COWD=$!
	for _ in $(seq 100); do
		dmsetup status "$name" 2>/dev/null | grep -q userspace && return 0
		sleep 0.1
	done
	echo "cowd did not attach; its log:" >&2
	cat "$work/cowd.log" >&2
	return 1
}
detach() {
	kill "$COWD"
	wait "$COWD" || true
	COWD=
}

modprobe loop 2>/dev/null || true

step "a 256 MiB base image with an ext4 file system"
truncate -s 256M "$work/base.img"
mkfs.ext4 -q -F "$work/base.img"
mkdir -p "$mnt"
mount -o loop "$work/base.img" "$mnt"
echo "written into the base before the demo" >"$mnt/base-file.txt"
umount "$mnt"
base_sum=$(sha256sum <"$work/base.img" | cut -d' ' -f1)
echo "base sha256: $base_sum"

step "dscow_tool -c disk.dscow base.img"
dscow_tool -c "$work/disk.dscow" "$work/base.img"

step "cowd -p dscow $name disk.dscow   (attach)"
attach
dmsetup table "$name"
ls -l "/dev/mapper/$name"

step "write through the copy-on-write disk"
mount "/dev/mapper/$name" "$mnt"
cat "$mnt/base-file.txt"
for i in $(seq 1 20); do head -c 1M /dev/urandom >"$mnt/data-$i.bin"; done
(cd "$mnt" && sha256sum data-*.bin) >"$work/data.sums"
echo "new file in the overlay" >"$mnt/overlay-file.txt"
df -h "$mnt" | tail -n 1
umount "$mnt"
echo "kernel counters: $(dmsetup status "$name")"

step "detach (cowd commits the dscow metadata on SIGTERM)"
detach
dmsetup info "$name" >/dev/null 2>&1 && { echo "device still there" >&2; exit 1; }
echo "detached"

step "the base is unchanged"
now=$(sha256sum <"$work/base.img" | cut -d' ' -f1)
echo "base sha256: $now"
[ "$now" = "$base_sum" ] || { echo "BASE CHANGED" >&2; exit 1; }
dmu info "$work/disk.dscow"

step "reattach: the data is back"
attach
fsck.ext4 -fn "/dev/mapper/$name" >/dev/null && echo "fsck: clean"
mount -o ro "/dev/mapper/$name" "$mnt"
cat "$mnt/overlay-file.txt"
(cd "$mnt" && sha256sum -c --quiet "$work/data.sums") && echo "20 files intact"
umount "$mnt"
detach
dmu check "$work/disk.dscow" && echo "dmu check: clean"

step "demo done: base untouched, overlay data intact"
