#!/bin/bash
# Unpack the ELF vmlinux from a bzImage (/boot/vmlinuz-*).
# Why: QEMU boots an ELF vmlinux directly through PVH, which skips the
# in-guest xz decompression (about 2.5 s per boot under TCG on 6.1).
# The payload starts at the first xz (fd 37 7a 58 5a 00) or zstd (28 b5 2f fd)
# magic; we decompress from there and keep the first candidate that is an ELF.
# usage: extract-vmlinux.sh VMLINUZ OUT
set -euo pipefail
IN=${1:?usage: extract-vmlinux.sh VMLINUZ OUT}
OUT=${2:?usage: extract-vmlinux.sh VMLINUZ OUT}
TMP=$OUT.tmp.$$
trap 'rm -f "$TMP"' EXIT

is_elf() { [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; }

try() { # try MAGIC_HEX DECOMPRESSOR...
	local magic=$1; shift
	local off
	# grep -obUaP prints byte offsets of every match of the magic.
	for off in $(LC_ALL=C grep -obUaP "$magic" "$IN" | cut -d: -f1); do
		tail -c +$((off + 1)) "$IN" | "$@" >"$TMP" 2>/dev/null || true
		if [ -s "$TMP" ] && is_elf "$TMP"; then
			mv "$TMP" "$OUT"
			return 0
		fi
	done
	return 1
}

try '\xfd\x37\x7a\x58\x5a\x00' xz -dc ||
	try '\x28\xb5\x2f\xfd' zstd -dcq ||
	{ echo "extract-vmlinux: no xz/zstd ELF payload found in $IN" >&2; exit 1; }
