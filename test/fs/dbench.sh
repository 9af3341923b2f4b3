#!/bin/bash
# dbench (NetBench-like file server load) in MOUNTPOINT: 2 clients.
set -euo pipefail
s=${FS_SCALE:-1}
dbench -D "$1" -t $((10 * s)) 2
