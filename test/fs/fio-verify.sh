#!/bin/bash
# fio random writes with checksums in MOUNTPOINT, then a verify pass
# (fio exits non-zero on any mismatch).
set -euo pipefail
s=${FS_SCALE:-1}
fio --name=verify --directory="$1" --size=$((32 * s))M --rw=randwrite --bs=4k \
	--ioengine=psync --direct=1 --verify=crc32c --verify_fatal=1 --do_verify=1
