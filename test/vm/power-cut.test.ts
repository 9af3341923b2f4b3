/**
 * Power-cut crash consistency of a dscow disk through cowd and the kernel
 * (6.12 guest, one boot): every write below the image's file system is
 * recorded with dm-log-writes, and the disk is rebuilt and checked at
 * sampled flush/FUA points by tools/log-writes/replay. See test/vm/power-cut.sh.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import t from 'tap';
import { assertGuestResults, countChecks } from '../support/guest-results.js';
import { guestKernels, REPO_ROOT, runInVm, vmCheck } from '../support/vm.js';

const SCRIPT = path.join(REPO_ROOT, 'test/vm/power-cut.sh');
const POINTS = 20;
const RECORDS = 120;
// Checks run once per cut point (`cpt` lines), the rest once.
const perPoint = fs
	.readFileSync(SCRIPT, 'utf8')
	.split('\n')
	.filter((l) => /^\s*cpt /.test(l)).length;

t.test('power cut at every sampled flush: fsck clean, fsynced records present', async (t) => {
	const k = guestKernels().find((g) => g.series === '6.12');
	if (!k) return t.fail('no 6.12 kernel in /boot (run .ci/install-deps)');
	await execa('make', ['-s', '-C', path.join(REPO_ROOT, 'kernel'), `KVER=${k.kver}`]);
	const r = await runInVm({
		kernel: '6.12',
		name: 'power-cut',
		script: `source ${SCRIPT}`,
		// vda: the image's file system, vdb: the write log, vdc: replay target (as big as vda), vdd: snapshot COW.
		disks: [{ sizeMiB: 320 }, { sizeMiB: 1024 }, { sizeMiB: 320 }, { sizeMiB: 256 }],
		env: { PC_POINTS: String(POINTS), PC_RECORDS: String(RECORDS) },
		timeoutSec: 1200,
	});
	t.comment(`VM ${r.durationMs} ms, run dir ${r.outDir}`);
	const times = path.join(r.outDir, 'times.txt');
	if (fs.existsSync(times)) t.comment(fs.readFileSync(times, 'utf8').trim());
	vmCheck(t, r);
	assertGuestResults(t, r.outDir, countChecks(SCRIPT) + perPoint * POINTS);
});
