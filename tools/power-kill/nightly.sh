#!/bin/bash
# Nightly power kill: test/vm/power-kill.test.ts with more cut points, on
# both guest kernels. Each cut is one guest boot (about 20-50 s under TCG,
# more while other VMs queue for the machine).
#
#   tools/power-kill/nightly.sh [COUNT]      # default 100 cuts per kernel
#   PK_SEED=N tools/power-kill/nightly.sh    # replay a run's kill delays
#   PK_KERNELS=6.1 tools/power-kill/nightly.sh 50
#
# Every cut prints a line (delay, phase killed in, records acknowledged);
# the last comment per kernel says how many cuts ran and where the summary
# JSON is (.cache/power-kill/<kernel>-<time>-<pid>/summary.json). A failed
# run keeps its disk image there for inspection. Exit status: tap's.
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${1:-100}
[[ $COUNT =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [COUNT]" >&2; exit 2; }
npm run -s build
make -s -C kernel all-kernels
# -t 0: no per-file timeout (100 cuts on two kernels take hours).
PK_CUTS=$COUNT PK_KERNELS=${PK_KERNELS:-6.1,6.12} exec npx tap -R tap -t 0 dist/test/vm/power-kill.test.js
