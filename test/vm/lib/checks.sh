# Check helpers for guest scripts (sourced inside the VM). Each check
# appends "ok - NAME" or "not ok - NAME # failed: CMD" to $DMU_OUT/results.txt;
# the host side (test/support/guest-results.ts) turns every line into an
# assertion and requires one line per `check` in the script.
set -uo pipefail
export PATH=$PATH:/usr/sbin:/sbin
RES=$DMU_OUT/results.txt
: >"$RES"

check() {
	local name=$1
	shift
	if "$@"; then echo "ok - $name" >>"$RES"; else echo "not ok - $name # failed: $*" >>"$RES"; fi
}

# wait_for CMD...: poll up to 30 s.
wait_for() {
	local i
	for i in $(seq 300); do "$@" && return 0; sleep 0.1; done
	return 1
}

eq() { [ "$1" = "$2" ] || { echo "expected '$2', got '$1'" >&2; return 1; }; }
fails() { ! "$@"; }
attached() { dmsetup status "$1" 2>/dev/null | grep -q ' userspace '; }
gone() { ! dmsetup info "$1" >/dev/null 2>&1; }
no_loops() { [ -z "$(losetup -a)" ]; }

# The dm-userspace module for the guest kernel (built on the host).
load_dmu() { modprobe dm-mod && modprobe loop && insmod "kernel/build/$KVER/dmu.ko"; }
