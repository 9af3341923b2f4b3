# Helpers for the dm-userspace target scenarios (sourced inside the guest).
# Each check appends "ok - NAME" or "not ok - NAME # detail" to
# $DMU_OUT/results.txt; the host-side tap test turns them into assertions.
set -uo pipefail
export PATH=$PATH:/usr/sbin:/sbin
RES=$DMU_OUT/results.txt
R=$PWD/kernel/build/tools/dmu-responder
: >"$RES"

check() {
	local name=$1
	shift
	if "$@"; then
		echo "ok - $name" >>"$RES"
	else
		echo "not ok - $name # failed: $*" >>"$RES"
	fi
}

# Field of `dmsetup status`: hits misses pending copies flushes commits
# evictions mapped daemon (see the header comment of dm-userspace.c).
st() {
	local i
	case $2 in
	hits) i=4 ;; misses) i=5 ;; pending) i=6 ;; copies) i=7 ;;
	flushes) i=8 ;; commits) i=9 ;; evictions) i=10 ;; mapped) i=11 ;;
	daemon) i=12 ;;
	esac
	dmsetup status "$1" | awk -v i=$i '{ print $i }' | sed 's/^daemon=//'
}

eq() { [ "$1" = "$2" ] || { echo "expected '$2', got '$1'" >&2; return 1; }; }
fails() { ! "$@" 2>/dev/null; }
ge() { [ "$1" -ge "$2" ] || { echo "expected >= $2, got $1" >&2; return 1; }; }

# wait_for CMD...: poll up to 20 s.
wait_for() {
	local i
	for i in $(seq 200); do
		"$@" && return 0
		sleep 0.1
	done
	return 1
}

# start_resp KEY LOG [options]: responder in the background, pid in RP.
start_resp() {
	local key=$1 log=$2
	shift 2
	"$R" -l "$log" "$@" "/dev/dmu/$key" >>"$DMU_OUT/responder.out" 2>&1 &
	RP=$!
	wait_for grep -q '^features' "$log"
}

stop_resp() {
	kill "$RP" 2>/dev/null
	wait "$RP" 2>/dev/null
	return 0
}

# Block-sized pattern files.
pattern() { head -c "$2" /dev/urandom >"$1"; }
blk() { dd if="$1" bs="$2" skip="$3" count=1 iflag=direct status=none; }
# writes_at_once DEV PAGE...: write a new random 4 KiB page at each page
# number PAGE of DEV, all at once, and into /tmp/expect; prints how many
# of the writes failed.
writes_at_once() {
	local dev=$1 n pids="" p failed=0
	shift
	for n in "$@"; do
		pattern /tmp/page$n 4096
		dd if=/tmp/page$n of=/tmp/expect bs=4k seek="$n" conv=notrunc status=none
		dd if=/tmp/page$n of="$dev" bs=4k seek="$n" oflag=direct status=none &
		pids="$pids $!"
	done
	for p in $pids; do wait "$p" || failed=$((failed + 1)); done
	echo $failed
}
# pages_at_once DEV BLOCK PAGE...: writes_at_once at each PAGE of 64 KiB
# block BLOCK.
pages_at_once() {
	local dev=$1 block=$2 i pages=""
	shift 2
	for i in "$@"; do pages="$pages $((block * 16 + i))"; done
	writes_at_once "$dev" $pages	# unquoted: one page number per word
}
# blocks_at_once DEV PAGE BLOCK...: writes_at_once at page PAGE of each
# 64 KiB block BLOCK.
blocks_at_once() {
	local dev=$1 page=$2 b pages=""
	shift 2
	for b in "$@"; do pages="$pages $((b * 16 + page))"; done
	writes_at_once "$dev" $pages	# unquoted: one page number per word
}

modprobe dm-mod
insmod "$PWD/kernel/build/$KVER/dmu.ko"
check "module loads" grep -q '^dmu ' /proc/modules
check "target registered" bash -c 'dmsetup targets | grep -q "^userspace"'
