/**
 * Xen in QEMU, end to end with stock parts only: the toolstack answers, a
 * paused PV guest on a loop-backed `phy:` disk is created and destroyed
 * cleanly, and a running guest writes to its disk and the data lands in
 * dom0's backing file. One boot for everything (a boot costs ~15 s of TCG).
 */
import { readFile } from 'node:fs/promises';
import t from 'tap';
import { readSteps, runInXen } from '../support/xen.js';

/** Runs in the guest: a pattern naming the guest at sector 8 of xvda. */
const DOMU_SCRIPT = `
n=$(sed -n 's/.*dmu.guest=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
[ -b /dev/xvda ] || { echo "no /dev/xvda"; exit 1; }
printf 'DMU-XEN-PATTERN-%s\\n' "$n" > /pattern
dd if=/pattern of=/dev/xvda bs=512 seek=8 conv=sync,fsync || exit 2
echo "wrote the pattern for $n"
`;

/** Runs in dom0; each step is recorded with dmu_step and asserted below. */
const DOM0_SCRIPT = `
. "$DMU_HARNESS/dom0-lib.sh"

out=$(xl info 2>&1)
dmu_step xl-info $? "$(grep -E '^(xen_version|nr_cpus|free_memory)' <<<"$out" | tr -s ' ' | tr '\\n' ';')" || exit 1
out=$(xl list 2>&1)
dmu_step xl-list $? "$(tr -s ' ' <<<"$out" | tr '\\n' ';')" || exit 1

# A paused guest on a loop device whose backing file is on tmpfs.
truncate -s 16M /run/paused.img
L=$(losetup -f --show /run/paused.img)
dmu_step losetup $? "$L" || exit 1
dmu_guest_cfg paused "phy:$L,xvda,w" > /run/paused.cfg
out=$(xl create -p /run/paused.cfg 2>&1)
dmu_step create-paused $? "$out" || exit 1
state=$(xl list paused 2>&1 | awk 'NR == 2 { print $5 }')
[[ $state == *p* ]]
dmu_step listed-paused $? "state=$state"
domid=$(xl domid paused)
out=$(xl destroy paused 2>&1)
dmu_step destroy $? "$out"
! xl domid paused >/dev/null 2>&1
dmu_step destroyed-gone $? "$(xl list 2>&1 | tr -s ' ' | tr '\\n' ';')"
backends=$(xenstore-list "/local/domain/0/backend/vbd/$domid" 2>/dev/null)
[ -z "$backends" ]
dmu_step backend-removed $? "$backends"
# A device still open (by blkback) is only marked autoclear by losetup -d
# and stays attached; a released one goes at once.
losetup -d "$L"
left=$(losetup -j /run/paused.img)
[ -z "$left" ]
dmu_step loop-released $? "$left"

# A running guest writes its pattern to xvda and powers off.
truncate -s 16M /run/writer.img
L=$(losetup -f --show /run/writer.img)
dmu_guest_cfg writer "phy:$L,xvda,w" > /run/writer.cfg
out=$(xl create /run/writer.cfg 2>&1)
dmu_step create-running $? "$out" || exit 1
dmu_wait_gone writer 180
dmu_step guest-powered-off $? || exit 1
sync
found=$(dd if=/run/writer.img bs=512 skip=8 count=1 2>/dev/null | head -c 32)
[[ $found == DMU-XEN-PATTERN-writer* ]]
dmu_step pattern-in-backing-file $? "$found"
losetup -d "$L"
exit 0
`;

const EXPECTED_STEPS = [
	'xl-info',
	'xl-list',
	'losetup',
	'create-paused',
	'listed-paused',
	'destroy',
	'destroyed-gone',
	'backend-removed',
	'loop-released',
	'create-running',
	'guest-powered-off',
	'pattern-in-backing-file',
];

t.test('Xen in QEMU: toolstack, paused guest, guest writing to a phy: disk', async (t) => {
	const r = await runInXen({ name: 'smoke', script: DOM0_SCRIPT, domuScript: DOMU_SCRIPT, timeoutSec: 900 });
	t.comment(`run dir ${r.outDir}: VM ${r.vmMs} ms, ${r.durationMs} ms with the wait for the VM lock`);
	t.equal(r.timedOut, false, 'QEMU finished before the timeout');
	t.equal(r.qemuExitCode, 0, 'QEMU exited after dom0 powered off');
	t.equal(r.exitCode, 0, 'dom0 script exit status');

	const steps = await readSteps(r.outDir);
	let prev = 0;
	for (const s of steps) {
		t.comment(`${s.step}: +${(s.uptime - prev).toFixed(1)} s (dom0 uptime ${s.uptime} s)`);
		prev = s.uptime;
	}
	for (const name of EXPECTED_STEPS) {
		const s = steps.find((x) => x.step === name);
		t.ok(s, `step ${name} ran`);
		if (s) t.ok(s.ok, `step ${name} succeeded (status ${s.status}: ${s.detail})`);
	}
	const info = steps.find((x) => x.step === 'xl-info');
	t.match(info?.detail ?? '', /xen_version : 4\.17/, 'xl info reports Xen 4.17');

	const writerLog = await readFile(`${r.outDir}/guest-console/guest-writer.log`, 'utf8').catch(() => '');
	t.match(writerLog, /DMU-DOMU-DONE rc=0/, 'the guest ran its script and reported success');
	t.same(r.kernelProblems, [], 'no kernel or hypervisor warnings');
	if (r.exitCode !== 0) t.comment(r.console.split('\n').slice(-60).join('\n'));
});
