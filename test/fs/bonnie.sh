#!/bin/bash
# bonnie++ in MOUNTPOINT: sequential/random I/O and file create/stat/delete.
# -r pretends little RAM so a small file size is accepted.
set -euo pipefail
s=${FS_SCALE:-1}
bonnie++ -q -d "$1" -s $((64 * s)) -r 32 -n 1 -u root -x 1 >/dev/null
