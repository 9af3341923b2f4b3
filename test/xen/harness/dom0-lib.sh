# Helpers for test scripts running in dom0: `. "$DMU_HARNESS/dom0-lib.sh"`.
# Needs DMU_OUT, DMU_DOMU_KERNEL, DMU_DOMU_RAMDISK (set by the harness).

# dmu_guest_cfg NAME DISKSPEC... : print an xl config for a PV guest running
# the harness's domU ramdisk (its init runs the test's domU script). Each
# DISKSPEC is one xl disk string, e.g. 'phy:/dev/loop0,xvda,w'.
# DMU_GUEST_EXTRA (optional) is appended to the guest's kernel command line;
# the domU script can read it from /proc/cmdline.
dmu_guest_cfg() {
	local name=$1 d disks=
	shift
	for d in "$@"; do
		disks="$disks${disks:+, }'$d'"
	done
	cat <<CFG
name = "$name"
type = "pv"
kernel = "$DMU_DOMU_KERNEL"
ramdisk = "$DMU_DOMU_RAMDISK"
extra = "console=hvc0 quiet dmu.guest=$name ${DMU_GUEST_EXTRA:-}"
memory = 128
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
disk = [ $disks ]
CFG
}

# dmu_wait_gone NAME SECONDS : wait until domain NAME is no longer listed.
dmu_wait_gone() {
	local i
	for i in $(seq $(($2 * 4))); do
		xl domid "$1" >/dev/null 2>&1 || return 0
		sleep 0.25
	done
	return 1
}

# dmu_json_str TEXT : TEXT as a JSON string (quotes, backslashes, control
# characters escaped; other bytes passed through).
dmu_json_str() {
	local s=${1//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\n'/\\n}
	s=${s//$'\t'/\\t}
	s=${s//$'\r'/}
	printf '"%s"' "$(printf '%s' "$s" | tr -d '\000-\010\013-\037')"
}

# dmu_step NAME STATUS [DETAIL] : record one step's result (STATUS 0 = ok)
# as a JSON line in $DMU_OUT/steps.jsonl; the host-side test asserts each.
# Returns STATUS so `cmd; dmu_step x $? || exit 1` reads naturally.
dmu_step() {
	local name=$1 status=$2 detail=${3:-}
	printf '{"step":%s,"ok":%s,"status":%d,"detail":%s,"uptime":%s}\n' \
		"$(dmu_json_str "$name")" "$([ "$status" -eq 0 ] && echo true || echo false)" \
		"$status" "$(dmu_json_str "$detail")" "$(cut -d' ' -f1 /proc/uptime)" \
		>> "$DMU_OUT/steps.jsonl"
	echo "dmu-step: $name status=$status ${detail:0:200}"
	return "$status"
}
