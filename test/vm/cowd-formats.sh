# Image formats served by cowd through the real kernel target: for each of
# qcow2, vhd (dynamic) and vmdk (monolithicSparse), an empty image made
# by qemu-img is attached, gets an ext4 file system and files, is detached,
# read by qemu-img (check where it can, convert to raw and compare files),
# reattached, and checked again. These formats grow their file on every
# allocation, so this also proves cowd grows the loop devices under them.
source test/vm/lib/checks.sh
load_dmu || exit 10
W=/tmp/fmt
mkdir -p $W/mnt
COWD=
attach() { # attach FORMAT NAME IMAGE
	dist/bin/cowd.mjs -p "$1" "$2" "$3" 2>>"$DMU_OUT/cowd-$2.log" &
	COWD=$!
	wait_for attached "$2"
}
detach() { # detach NAME
	kill "$COWD" && wait "$COWD"
	local rc=$?
	wait_for gone "$1" && [ $rc -eq 0 ]
}
fill() { # fill DEV: ext4 with 12 files of 1 MiB, their sums in $W/sums
	mkfs.ext4 -q -F "$1" && mount "$1" $W/mnt || return 1
	for i in $(seq 12); do head -c 1M /dev/urandom >$W/mnt/f$i || return 1; done
	(cd $W/mnt && sha256sum f*) >$W/sums
	umount $W/mnt
}
same_files() { # same_files DEV
	mount -o ro "$1" $W/mnt || return 1
	(cd $W/mnt && sha256sum -c --quiet $W/sums)
	local rc=$?
	umount $W/mnt
	return $rc
}

# qcow (v1) is covered on the host only: its fixed 4 KiB clusters make an
# ext4 fill through the kernel take many minutes under emulation.
for spec in qcow2:qcow2: vpc:vhd:subformat=dynamic vmdk:vmdk:; do
	qfmt=${spec%%:*}
	rest=${spec#*:}
	fmt=${rest%%:*}
	opts=${rest#*:}
	img=$W/disk.$fmt
	name=fmt-$fmt
	rm -f "$img" $W/raw
	qemu-img create -q -f "$qfmt" ${opts:+-o "$opts"} "$img" 160M
	check "$fmt: attach an empty image" attach "$fmt" $name "$img"
	check "$fmt: mkfs.ext4 and 12 MiB of files" fill /dev/mapper/$name
	check "$fmt: detach" detach $name
	if [ "$qfmt" != vpc ]; then # qemu-img cannot check vhd
		check "$fmt: qemu-img check clean" qemu-img check -q -f "$qfmt" "$img"
	fi
	qemu-img convert -f "$qfmt" -O raw "$img" $W/raw
	check "$fmt: qemu-img sees the same files" same_files $W/raw
	check "$fmt: reattach" attach "$fmt" $name "$img"
	check "$fmt: e2fsck clean after reattach" e2fsck -fn /dev/mapper/$name
	check "$fmt: files intact after reattach" same_files /dev/mapper/$name
	check "$fmt: final detach" detach $name
	check "$fmt: no loop device left" test -z "$(losetup -a)"
done
exit 0
