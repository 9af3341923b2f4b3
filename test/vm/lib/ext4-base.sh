# A base image for the power-cut tests (sourced inside the VM): an ext4 with
# 24 files of random bytes in four directories, and their sha256sums. Lost
# or damaged base contents then show as fsck errors or failed sums.

# make_ext4_base IMAGE SIZE FILE_STEP SUMS: file i holds i * FILE_STEP bytes;
# SUMS lists them relative to the file system's root (check with
# `(cd MOUNTPOINT && sha256sum -c SUMS)`).
make_ext4_base() {
	local img=$1 size=$2 step=$3 sums=$4 i
	truncate -s "$size" "$img" && mkfs.ext4 -q -F -E nodiscard "$img" || return 1
	mkdir -p /mnt/b && mount -o loop "$img" /mnt/b || return 1
	for i in $(seq 24); do
		mkdir -p /mnt/b/d$((i % 4)) && head -c $((i * step)) /dev/urandom >/mnt/b/d$((i % 4))/base-$i || return 1
	done
	(cd /mnt/b && find d* -type f -print0 | xargs -0 sha256sum) >"$sums"
	umount /mnt/b && sync
}
