#!/bin/bash
# Make sure CACHEDIR holds vmlinux + initramfs.cpio.gz for KVER, built from
# the current inputs. KEY describes those inputs (kernel file size/mtime,
# hashes of the harness scripts); it is stored in CACHEDIR/key and the build
# is skipped when it matches. Run under flock by test/support/vm.ts so two
# test processes never build the same cache at once.
# usage: prepare.sh KVER VMLINUZ CACHEDIR KEY
set -euo pipefail
KVER=${1:?usage: prepare.sh KVER VMLINUZ CACHEDIR KEY}
VMLINUZ=${2:?}
DIR=${3:?}
KEY=${4:?}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$DIR"
if [ -f "$DIR/key" ] && [ "$(cat "$DIR/key")" = "$KEY" ] && [ -s "$DIR/vmlinux" ] && [ -s "$DIR/initramfs.cpio.gz" ]; then
	exit 0
fi
rm -f "$DIR/key"
"$HERE/extract-vmlinux.sh" "$VMLINUZ" "$DIR/vmlinux"
"$HERE/mkinitramfs.sh" "$KVER" "$DIR/initramfs.cpio.gz"
printf '%s' "$KEY" >"$DIR/key"
