# dom0 side of test/xen/dmu-e2e.test.ts: dmu disks under a real Xen 4.17
# (xl create -> libxl -> block-dmu -> dmu attach -> cowd -> blkback).
# Every check is recorded with dmu_step (one JSON line in
# $DMU_OUT/steps.jsonl) and asserted by the host-side test, which also
# checks that every step ran. Scenarios (numbers as in issue 5):
#   s1 stock spelling (target=), guest writes, data read back in dom0
#   s2 legacy "dmu:" spelling: refused by stock xl, works with our libxlutil
#   s3 create -p + destroy tears everything down
#   s4 two guests, one base, two dscow images at once
#   s5 the same dscow read-write by two guests: second create fails
#   s6 failing adds (missing image, relative path) fail with our message
#   s7 dmu backend: cowd and the backend killed while a guest does I/O
# Env: DMU_LIBXLUTIL (dir with the patched libxlutil.so.4.17), DMU_SCENARIOS
# (e.g. "s1 s7"; default all).
set -u
. "$DMU_HARNESS/dom0-lib.sh"
# cowd's and dmu's own logs, for post-mortems.
trap 'cp -r /var/log/dmu "$DMU_OUT/dmu-logs" 2>/dev/null' EXIT

# --- helpers ---------------------------------------------------------------
# check NAME CMD... : run CMD, record its status and output as step NAME.
check() {
	local name=$1 out st
	shift
	out=$("$@" 2>&1)
	st=$?
	dmu_step "$name" "$st" "$out"
}
eq() { [ "$1" = "$2" ] || { echo "expected '$2', got '$1'"; return 1; }; }
has() { grep -qE -- "$2" <<<"$1" || { echo "no /$2/ in: $1"; return 1; }; }

# What a guest's disks may leave behind: dm devices, loop devices, cowd.
leftovers() {
	local d
	d=$(dmsetup ls 2>&1 | grep -v '^No devices found')
	[ -n "$d" ] && echo "dmsetup ls: $d"
	d=$(losetup -a)
	[ -n "$d" ] && echo "losetup -a: $d"
	d=$(pgrep -af '/cowd\.m?js')
	[ -n "$d" ] && echo "cowd: $d"
	return 0
}
# wait_clean [SECONDS]: wait until nothing is left (remove runs after the
# domain is gone, from xl's background process).
wait_clean() {
	local i left
	for i in $(seq $((${1:-60} * 2))); do
		left=$(leftovers)
		[ -z "$left" ] && { echo "clean after ~$((i / 2)) s"; return 0; }
		sleep 0.5
	done
	echo "$left"
	return 1
}
dmu_devs() { dmsetup ls 2>/dev/null | awk '/^dmu-xen-/ { print $1 }' | sort | tr '\n' ' '; }
n_dmu_devs() { dmsetup ls 2>/dev/null | grep -c '^dmu-xen-'; }
sector() { dd if="$1" bs=512 skip="$2" count=1 2>/dev/null; }
# pattern_ok DEV NAME: the guest's line is in sector 4097 of DEV, the rest of
# its 64 KiB block (copied from the base on the guest's write) is the base's.
pattern_ok() {
	local got
	got=$(sector "$1" 4097 | tr -d '\000')
	eq "$got" "DMU-XEN-PATTERN-$2" || return 1
	cmp <(dd if="$1" bs=512 skip=4096 count=1 2>/dev/null; dd if="$1" bs=512 skip=4098 count=126 2>/dev/null) \
		<(dd if=/run/base bs=512 skip=4096 count=1 2>/dev/null; dd if=/run/base bs=512 skip=4098 count=126 2>/dev/null) ||
		{ echo "the rest of the block differs from the base"; return 1; }
	echo "sector 4097: $got; rest of the block = base"
}
# readback IMAGE NAME: attach IMAGE again by hand, check the pattern, detach.
readback() {
	local dev
	dev=$(dmu attach --name "rb-$2" "dscow:$1:/run/base") || return 1
	pattern_ok "$dev" "$2"
	local st=$?
	dmu detach "rb-$2" || return 1
	return $st
}
guest_done() { grep -h 'DMU-DOMU-DONE\|wrote the pattern\|IO-' "$DMU_OUT/guest-console/guest-$1.log" 2>/dev/null | tail -n 3; grep -q 'DMU-DOMU-DONE rc=0' "$DMU_OUT/guest-console/guest-$1.log"; }
new_dscow() { node dist/bin/dscow_tool.mjs -c "$1" /run/base >/dev/null; }
xl_create() { # xl_create STEP CFG [xl args]: record xl's status and stderr
	local name=$1 cfg=$2 out st
	shift 2
	out=$(xl create "$@" "$cfg" 2>&1)
	st=$?
	dmu_step "$name" "$st" "$out"
}

# Waits poll and end as soon as their condition holds, so their bounds are
# generous: CI machines have run this 1.5-2x slower than our own.

# want sN: is scenario sN in DMU_SCENARIOS (default: all of them)?
want() { [[ " ${DMU_SCENARIOS:-s1 s2 s3 s4 s5 s6 s7} " == *" $1 "* ]]; }

# --- setup -----------------------------------------------------------------
# A `dmu` command for block-dmu: libxl gives hotplug scripts xl's PATH.
mkdir -p /run/dmu-bin
printf '#!/bin/sh\nexec node %s/dist/bin/dmu.mjs "$@"\n' "$PWD" >/run/dmu-bin/dmu
chmod +x /run/dmu-bin/dmu
export PATH=/run/dmu-bin:$PATH

check setup-modules bash -c "modprobe dm-mod && insmod kernel/build/$DMU_KVER/dmu.ko" || exit 1
dd if=/dev/urandom of=/run/base bs=1M count=32 status=none
base_sum=$(sha256sum </run/base)
check setup-dscow new_dscow /run/x.dscow || exit 1
new_dscow /run/y.dscow
check setup-clean wait_clean 1

# --- s1: stock spelling, a running guest writes, dom0 reads it back --------
if want s1; then
dmu_guest_cfg g1 'vdev=xvda, access=rw, script=block-dmu, target=dscow:/run/x.dscow:/run/base' >/run/g1.cfg
xl_create s1-create /run/g1.cfg
check s1-guest-powered-off dmu_wait_gone g1 300
check s1-guest-wrote guest_done g1
check s1-nothing-left wait_clean 60
check s1-pattern-read-back readback /run/x.dscow g1
check s1-base-unchanged eq "$(sha256sum </run/base)" "$base_sum"
check s1-dscow-check dmu check /run/x.dscow
check s1-nothing-left-after-readback wait_clean 10
fi

# --- s2: legacy dmu: spelling ----------------------------------------------
if want s2; then
dmu_guest_cfg g2 'dmu:dscow:/run/y.dscow:/run/base,xvda,w' >/run/g2.cfg
out=$(xl create /run/g2.cfg 2>&1)
st=$?
dmu_step s2-stock-xl-rejects "$([ $st -ne 0 ] && ! xl domid g2 >/dev/null 2>&1; echo $?)" "status $st: $out"
check s2-stock-nothing-left wait_clean 10
LD_LIBRARY_PATH=$DMU_LIBXLUTIL xl_create s2-patched-create /run/g2.cfg
check s2-guest-powered-off dmu_wait_gone g2 300
check s2-guest-wrote guest_done g2
check s2-nothing-left wait_clean 60
check s2-pattern-read-back readback /run/y.dscow g2
check s2-base-unchanged eq "$(sha256sum </run/base)" "$base_sum"
fi

# --- s3: create -p, then destroy -------------------------------------------
if want s3; then
new_dscow /run/z.dscow
dmu_guest_cfg g3 'vdev=xvda, access=rw, script=block-dmu, target=dscow:/run/z.dscow:/run/base' >/run/g3.cfg
xl_create s3-create-paused /run/g3.cfg -p
domid=$(xl domid g3)
check s3-device-there eq "$(dmu_devs)" "dmu-xen-$domid-51712 "
check s3-cowd-running pgrep -f '/cowd\.m?js'
check s3-loops-there bash -c '[ -n "$(losetup -a)" ] && losetup -a'
check s3-backend-connected eq "$(xenstore-read "/local/domain/0/backend/vbd/$domid/51712/hotplug-status")" connected
check s3-destroy xl destroy g3
check s3-nothing-left wait_clean 30
fi

# --- s4: two guests share one base -----------------------------------------
if want s4; then
new_dscow /run/a.dscow
new_dscow /run/b.dscow
dmu_guest_cfg g4a 'vdev=xvda, access=rw, script=block-dmu, target=dscow:/run/a.dscow:/run/base' >/run/g4a.cfg
dmu_guest_cfg g4b 'vdev=xvda, access=rw, script=block-dmu, target=dscow:/run/b.dscow:/run/base' >/run/g4b.cfg
xl_create s4-create-first /run/g4a.cfg -p
xl_create s4-create-second /run/g4b.cfg -p
check s4-two-devices eq "$(n_dmu_devs)" 2
dmu_step s4-devices 0 "$(dmu_devs); $(pgrep -f '/cowd\.m?js' | wc -l) cowd; $(losetup -a | wc -l) loops"
check s4-two-cowd eq "$(pgrep -f '/cowd\.m?js' | wc -l)" 2
check s4-destroy-first xl destroy g4a
check s4-second-still-there eq "$(n_dmu_devs)" 1
check s4-destroy-second xl destroy g4b
check s4-nothing-left wait_clean 30
check s4-base-unchanged eq "$(sha256sum </run/base)" "$base_sum"
fi

# --- s5: the same dscow read-write by two guests ---------------------------
if want s5; then
new_dscow /run/s.dscow
dmu_guest_cfg g5a 'vdev=xvda, access=rw, script=block-dmu, target=dscow:/run/s.dscow:/run/base' >/run/g5a.cfg
dmu_guest_cfg g5b 'vdev=xvda, access=rw, script=block-dmu, target=dscow:/run/s.dscow:/run/base' >/run/g5b.cfg
xl_create s5-create-first /run/g5a.cfg -p
before=$(dmu_devs)
loops_before=$(losetup -a | wc -l)
out=$(xl create -p /run/g5b.cfg 2>&1)
st=$?
dmu_step s5-second-create-fails "$([ $st -ne 0 ]; echo $?)" "status $st: $out"
check s5-our-message has "$out" 'already open read-write'
check s5-second-guest-gone bash -c '! xl domid g5b'
sleep 2
check s5-first-disk-untouched eq "$(dmu_devs)" "$before"
check s5-no-extra-loops eq "$(losetup -a | wc -l)" "$loops_before"
check s5-destroy-first xl destroy g5a
check s5-nothing-left wait_clean 30
fi

# --- s6: failing adds ------------------------------------------------------
if want s6; then
dmu_guest_cfg g6a 'vdev=xvda, access=rw, script=block-dmu, target=dscow:/run/missing.dscow:/run/base' >/run/g6a.cfg
out=$(xl create -p /run/g6a.cfg 2>&1)
st=$?
dmu_step s6-missing-image-fails "$([ $st -ne 0 ]; echo $?)" "status $st: $out"
check s6-missing-image-message has "$out" 'cannot attach dmu-xen-[0-9]+-51712: .*missing\.dscow'
check s6-missing-image-nothing-left wait_clean 30
dmu_guest_cfg g6b 'vdev=xvda, access=rw, script=block-dmu, target=dscow:relative' >/run/g6b.cfg
out=$(xl create -p /run/g6b.cfg 2>&1)
st=$?
dmu_step s6-bad-spec-fails "$([ $st -ne 0 ]; echo $?)" "status $st: $out"
check s6-bad-spec-message has "$out" 'bad disk spec .*not an absolute path'
check s6-bad-spec-nothing-left wait_clean 30
check s6-no-domains-left bash -c '! xl domid g6a && ! xl domid g6b'
fi

# --- s7: dmu backend; cowd and the backend die while a guest writes --------
if want s7; then
mkdir -p /run/dmu
dmu backend --log-level debug >"$DMU_OUT/backend.log" 2>&1 &
backend=$!
for i in $(seq 240); do [ -S /run/dmu/backend.sock ] && break; sleep 0.5; done
check s7-backend-up test -S /run/dmu/backend.sock
new_dscow /run/io.dscow
dmu_guest_cfg io 'vdev=xvda, access=rw, script=block-dmu, target=dscow:/run/io.dscow:/run/base' >/run/io.cfg
xl_create s7-create /run/io.cfg
iolog=$DMU_OUT/guest-console/guest-io.log
# grep -c prints 0 and fails when nothing matches: no "|| echo 0" here.
wrote() { local n; n=$(grep -c '^IO-WROTE' "$iolog" 2>/dev/null); echo "${n:-0}"; }
until_wrote() { # until_wrote N SECONDS
	local i
	for i in $(seq $(($2 * 2))); do [ "$(wrote)" -ge "$1" ] && return 0; sleep 0.5; done
	echo "only $(wrote) writes"
	return 1
}
check s7-guest-writing until_wrote 3 300
domid=$(xl domid io)
# Not "name": check() has a local of that name, which functions it calls see.
disk=dmu-xen-$domid-51712
old=$(cat "/run/dmu/$disk.pid")
kill -9 "$old"
at_kill=$(wrote)
restarted() {
	local i p
	for i in $(seq 360); do
		p=$(cat "/run/dmu/$disk.pid" 2>/dev/null)
		[ -n "$p" ] && [ "$p" != "$old" ] && kill -0 "$p" 2>/dev/null && { echo "cowd $old -> $p"; return 0; }
		sleep 0.5
	done
	echo "no new cowd (pid file: $p)"
	return 1
}
check s7-backend-restarted-cowd restarted
check s7-guest-writes-after-cowd-kill until_wrote $((at_kill + 3)) 300
# stop_backend STEP: SIGTERM, then at most 30 s; a backend that does not exit
# is recorded as a failure (with where its threads sleep) and SIGKILLed, so
# the run goes on instead of hanging.
stop_backend() {
	local i
	kill "$backend"
	for i in $(seq 60); do kill -0 "$backend" 2>/dev/null || { wait "$backend" 2>/dev/null; dmu_step "$1" 0; return 0; }; sleep 0.5; done
	dmu_step "$1" 1 "still running 30 s after SIGTERM; fds: $(ls -l /proc/$backend/fd 2>&1 | awk '{ print $NF }' | tr '\n' ' '); wchan: $(cat /proc/$backend/task/*/wchan 2>&1 | tr '\0\n' '  '); children: $(pgrep -P "$backend" | tr '\n' ' ')"
	kill -9 "$backend"
	wait "$backend" 2>/dev/null
	return 1
}
stop_backend s7-backend-exits-on-sigterm
at_kill=$(wrote)
check s7-guest-writes-without-backend until_wrote $((at_kill + 2)) 180
dmu backend --log-level debug >>"$DMU_OUT/backend.log" 2>&1 &
backend=$!
check s7-backend-adopted-worker bash -c "for i in \$(seq 360); do grep -q '\"adopted\":\[\"$disk\"\]' '$DMU_OUT/backend.log' && exit 0; sleep 0.5; done; exit 1"
check s7-guest-powered-off dmu_wait_gone io 400
check s7-guest-io-ok bash -c "grep -E 'IO-(OK|MISMATCH|WRITE-FAILED)|DMU-DOMU-DONE' '$iolog'; grep -q 'DMU-DOMU-DONE rc=0' '$iolog'"
check s7-nothing-left wait_clean 60
stop_backend s7-second-backend-exits-on-sigterm
check s7-base-unchanged eq "$(sha256sum </run/base)" "$base_sum"
check s7-dscow-check dmu check /run/io.dscow
fi

dmu_step all-done 0
exit 0
