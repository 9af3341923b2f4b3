# Sourced by dom0-run.sh: start what Debian's /etc/init.d/xen would
# (xenfs, backend modules, xenstored, xen-init-dom0, xenconsoled).
# Sets XEN_BIN (the versioned tools directory) and returns non-zero if the
# toolstack cannot work.

dmu_xen_up() {
	XEN_BIN=$(/usr/lib/xen-common/bin/xen-dir 2>/dev/null)/bin
	if [ ! -x "$XEN_BIN/xl" ]; then
		XEN_BIN=$(ls -d /usr/lib/xen-4.*/bin 2>/dev/null | sort -V | tail -1)
	fi
	[ -x "$XEN_BIN/xl" ] || { echo "dom0-up: no Xen tools found"; return 1; }
	export PATH=$XEN_BIN:$PATH

	mkdir -p /var/log/xen/console /run/xen /run/xenstored /run/lock /var/lib/xen
	stamp xen-tools-found
	modprobe xenfs && mount -t xenfs xenfs /proc/xen || { echo "dom0-up: xenfs"; return 1; }
	grep -q control_d /proc/xen/capabilities || { echo "dom0-up: not dom0"; return 1; }
	# One modprobe for all: every process start is expensive in a PV dom0 under TCG.
	modprobe -a xen-evtchn xen-gntdev xen-gntalloc xen-blkback xen-privcmd loop dm-mod ||
		echo "dom0-up: modprobe failed"

	stamp modules-loaded
	# oxenstored is Debian's default; the C daemon when it is absent.
	if [ -x "$XEN_BIN/oxenstored" ]; then
		XENSTORED_ROOTDIR=/run/xenstored "$XEN_BIN/oxenstored" --pid-file /run/xenstore.pid
	else
		XENSTORED_ROOTDIR=/run/xenstored "$XEN_BIN/xenstored" --pid-file /run/xenstore.pid
	fi
	local i
	for i in $(seq 120); do
		xenstore-read -s / >/dev/null 2>&1 && break
		sleep 0.25
	done
	xenstore-read -s / >/dev/null 2>&1 || { echo "dom0-up: xenstored does not answer"; return 1; }

	stamp xenstored-up
	timeout 60 "$XEN_BIN/xen-init-dom0" >/dev/null || { echo "dom0-up: xen-init-dom0 failed"; return 1; }
	stamp xen-init-dom0-done
	# Guest consoles are logged into the out share so tests can read them.
	mkdir -p "$DMU_OUT/guest-console"
	"$XEN_BIN/xenconsoled" --pid-file /run/xenconsoled.pid --log=guest \
		--log-dir="$DMU_OUT/guest-console" || { echo "dom0-up: xenconsoled"; return 1; }
}
