#!/bin/bash
# stress-ng file-system stressors (the seed's fsstress role) in MOUNTPOINT.
set -euo pipefail
s=${FS_SCALE:-1}
stress-ng --temp-path "$1" --timeout $((10 * s))s --metrics-brief --verify \
	--hdd 1 --hdd-bytes 16M --dir 1 --link 1 --rename 1 --fallocate 1 --fallocate-bytes 16M --dentry 1
