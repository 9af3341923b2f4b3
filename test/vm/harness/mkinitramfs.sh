#!/bin/bash
# Build the guest's initramfs: busybox-static, the modules needed to reach the
# host root (virtio-pci, 9p, overlay, virtio-blk), and our /init.
# Modules are stored decompressed: busybox insmod cannot read .ko.xz/.ko.zst.
# usage: mkinitramfs.sh KVER OUT.cpio.gz
set -euo pipefail
KVER=${1:?usage: mkinitramfs.sh KVER OUT.cpio.gz}
OUT=${2:?usage: mkinitramfs.sh KVER OUT.cpio.gz}
HERE=$(cd "$(dirname "$0")" && pwd)
BUSYBOX=$(command -v busybox) || { echo "mkinitramfs: busybox not found (apt install busybox-static)" >&2; exit 1; }
# A dynamically linked busybox would need the host's libc inside the
# initramfs (checked when file(1) is there; busybox-static is what we install).
if command -v file >/dev/null && ! file -L "$BUSYBOX" | grep -q 'statically linked'; then
	echo "mkinitramfs: $BUSYBOX is not static (apt install busybox-static)" >&2
	exit 1
fi
[ -d "/lib/modules/$KVER" ] || { echo "mkinitramfs: /lib/modules/$KVER missing" >&2; exit 1; }

W=$(mktemp -d /tmp/dmu-initrd.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W"/{bin,dev,proc,sys,newroot,lower,upper,out,mods}
cp "$BUSYBOX" "$W/bin/busybox"
: >"$W/mods/load.list"
# --show-depends lists dependencies first, then the module; built-in modules
# print "builtin ..." and are skipped.
for m in virtio_pci 9pnet_virtio 9p overlay virtio_blk; do
	modprobe -S "$KVER" --show-depends "$m" | while read -r kind path _; do
		[ "$kind" = insmod ] || continue
		base=$(basename "$path")
		base=${base%.xz}; base=${base%.zst}; base=${base%.gz}
		grep -qx "$base" "$W/mods/load.list" && continue
		case "$path" in
		*.xz) xz -dc "$path" >"$W/mods/$base" ;;
		*.zst) zstd -dcq "$path" >"$W/mods/$base" ;;
		*.gz) gzip -dc "$path" >"$W/mods/$base" ;;
		*) cp "$path" "$W/mods/$base" ;;
		esac
		echo "$base" >>"$W/mods/load.list"
	done
done
cp "$HERE/init" "$W/init"
chmod 755 "$W/init"
(cd "$W" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$OUT.tmp.$$"
mv "$OUT.tmp.$$" "$OUT"
echo "mkinitramfs: $OUT ($(stat -c %s "$OUT") bytes), modules: $(tr '\n' ' ' <"$W/mods/load.list")"
