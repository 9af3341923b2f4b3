# The Xen backend path end to end in a real kernel, without a hypervisor:
# Debian's xenstored (with the fake-Xen shim), `dmu backend`, and the
# block-dmu hotplug script run exactly as libxl would run them, over real
# dmu disks (dm-userspace target + cowd + dscow). Results go to
# $DMU_OUT/results.txt as "ok - NAME" / "not ok - NAME # detail".
source test/vm/lib/checks.sh
export PATH=/tmp/bin:$PATH

load_dmu || exit 10
mkdir -p /tmp/bin /tmp/scripts /tmp/xs
printf '#!/bin/sh\nexec node %s/dist/bin/dmu.mjs "$@"\n' "$PWD" >/tmp/bin/dmu
chmod +x /tmp/bin/dmu
ln -s /etc/xen/scripts/*.sh /tmp/scripts/
cp tools/xen-scripts/block-dmu /tmp/scripts/

export XENSTORED_PATH=/tmp/xs/socket
XENSTORED_RUNDIR=/tmp/xs LD_PRELOAD=$SHIM /usr/lib/xen-4.17/bin/xenstored --no-fork \
	>"$DMU_OUT/xenstored.log" 2>&1 &
wait_for xenstore-exists / || exit 11

dd if=/dev/urandom of=/tmp/base bs=1M count=32 status=none
base_sum=$(sha256sum </tmp/base)
node dist/bin/dscow_tool.mjs -c /tmp/x.dscow /tmp/base >"$DMU_OUT/dscow_tool.txt" || exit 12
dd if=/dev/urandom of=/tmp/pat bs=4k count=16 status=none

dmu backend >"$DMU_OUT/backend.log" 2>&1 &
BACKEND=$!
wait_for test -S /run/dmu/backend.sock || exit 13

hot() { # hot DOMID DEVID add|remove, as libxl runs it
	XENBUS_PATH=backend/vbd/$1/$2 XENBUS_TYPE=vbd XENBUS_BASE_PATH=backend \
		bash /tmp/scripts/block-dmu "$3" </dev/null >>"$DMU_OUT/hotplug.log" 2>&1
}
libxl_nodes() { # libxl_nodes DOMID DEVID PARAMS MODE
	local b=/local/domain/0/backend/vbd/$1/$2
	xenstore-write "$b/params" "$3" "$b/mode" "$4" "$b/type" phy "$b/state" 2
}
vbd=/local/domain/0/backend/vbd/5/51712
dev=/dev/mapper/dmu-xen-5-51712

libxl_nodes 5 51712 "dscow:/tmp/x.dscow:/tmp/base" w
check "add succeeds" hot 5 51712 add
check "hotplug-status is connected" eq "$(xenstore-read $vbd/hotplug-status)" connected
check "physical-device-path is the dm node" eq "$(xenstore-read $vbd/physical-device-path)" $dev
check "physical-device is its hex major:minor" eq "$(xenstore-read $vbd/physical-device)" "$(stat -L -c %t:%T $dev)"
check "add twice is harmless" hot 5 51712 add

dd if=/tmp/pat of=$dev bs=4k seek=100 oflag=direct conv=fsync status=none
check "guest writes read back" cmp -n 65536 /tmp/pat <(dd if=$dev bs=4k skip=100 count=16 iflag=direct status=none)
check "base untouched" eq "$(sha256sum </tmp/base)" "$base_sum"

libxl_nodes 6 51712 "dscow:/tmp/x.dscow:/tmp/base" w
check "same dscow read-write by a second guest is refused" fails hot 6 51712 add
check "... with hotplug-status error" eq "$(xenstore-read /local/domain/0/backend/vbd/6/51712/hotplug-status)" error
xenstore-read /local/domain/0/backend/vbd/6/51712/hotplug-error >"$DMU_OUT/refusal.txt"
check "... and a reason in hotplug-error" grep -qi 'in use\|already\|lock' "$DMU_OUT/refusal.txt"
check "remove after the failed add" hot 6 51712 remove
check "the first disk still serves" cmp -n 65536 /tmp/pat <(dd if=$dev bs=4k skip=100 count=16 iflag=direct status=none)

# The worker dies: the backend starts it again, I/O to never-touched blocks goes on.
old=$(cat /run/dmu/dmu-xen-5-51712.pid)
kill -9 "$old"
check "I/O after a cowd crash completes" timeout 60 dd if=/tmp/pat of=$dev bs=4k seek=3000 oflag=direct conv=fsync status=none
check "the backend restarted cowd" test "$(cat /run/dmu/dmu-xen-5-51712.pid)" != "$old"
check "data written across the crash reads back" cmp -n 65536 /tmp/pat <(dd if=$dev bs=4k skip=3000 count=16 iflag=direct status=none)

# The backend itself is restarted: the worker keeps serving, and is adopted.
kill "$BACKEND"; wait "$BACKEND" 2>/dev/null
check "I/O while the backend is down" timeout 60 dd if=/tmp/pat of=$dev bs=4k seek=5000 oflag=direct conv=fsync status=none
dmu backend >>"$DMU_OUT/backend.log" 2>&1 &
BACKEND=$!
wait_for test -S /run/dmu/backend.sock
check "the new backend adopted the worker" wait_for grep -q '"adopted":\["dmu-xen-5-51712"\]' "$DMU_OUT/backend.log"

check "remove succeeds" hot 5 51712 remove
check "device removed" gone dmu-xen-5-51712
check "no cowd left" bash -c '! pgrep -f "cli/[c]owd.js" >/dev/null'
check "no loop device left" no_loops
check "base still untouched" eq "$(sha256sum </tmp/base)" "$base_sum"

# libxl deleted the vbd without running remove: the backend tears it down.
check "add again" hot 5 51712 add
check "the data is still in the dscow" cmp -n 65536 /tmp/pat <(dd if=$dev bs=4k skip=5000 count=16 iflag=direct status=none)
xenstore-rm /local/domain/0/backend/vbd/5
check "vanished vbd torn down by the backend" wait_for gone dmu-xen-5-51712
check "... and its loop devices" wait_for no_loops
check "remove after teardown is harmless" hot 5 51712 remove

# A failed add leaves nothing behind.
libxl_nodes 7 51712 "dscow:/tmp/missing.dscow:/tmp/base" w
check "add of a missing image fails" fails hot 7 51712 add
check "... with hotplug-status error" eq "$(xenstore-read /local/domain/0/backend/vbd/7/51712/hotplug-status)" error
check "... and nothing left" bash -c '[ -z "$(dmsetup ls | grep dmu-xen)" ] && [ -z "$(losetup -a)" ]'

kill "$BACKEND"; wait "$BACKEND" 2>/dev/null

# By hand, no backend watching: cowd dies, the guest goes on writing
# never-touched blocks of a region answered copy-on-write (the kernel
# allocates them itself, no daemon needed), then the admin detaches.
# dmu detach serves the disk once more so those blocks are recorded.
hand=$(dmu attach -n byhand dscow:/tmp/x.dscow:/tmp/base)
dd if=/dev/urandom of=/tmp/pat2 bs=64k count=4 status=none
dd if="$hand" of=/dev/null bs=64k skip=200 count=1 iflag=direct status=none
kill -9 "$(cat /run/dmu/byhand.pid)"
check "first writes with cowd dead complete" timeout 60 dd if=/tmp/pat2 of="$hand" bs=64k seek=201 oflag=direct status=none
check "dmu detach after the crash" dmu detach byhand
check "... removed the device" gone byhand
hand=$(dmu attach -n byhand dscow:/tmp/x.dscow:/tmp/base)
check "what was written after the crash is in the image" cmp -n 262144 /tmp/pat2 <(dd if="$hand" bs=64k skip=201 count=4 iflag=direct status=none)
check "detach again" dmu detach byhand
node dist/bin/dmu.mjs check /tmp/x.dscow >"$DMU_OUT/check.txt" 2>&1
check "dmu check: the dscow is clean" test $? -eq 0
exit 0
