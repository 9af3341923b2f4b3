/**
 * cowd + dscow against the real dm-userspace target, on both Debian guest
 * kernels: reads come from the base, writes land in the image and never in
 * the base, partial writes keep the base bytes around them, whole-block
 * writes skip the copy (kernel copies counter), ext4 survives detach and
 * reattach, a cowd killed with -9 in the middle of fio --verify is replaced
 * and fio finishes clean, the refusals say what is wrong, and the seed's
 * file-system load (test/fs/) runs on the CoW disk with e2fsck clean after.
 *
 * The guest script (cowd-dscow.sh) records "ok - NAME" / "not ok - NAME # why" lines; each
 * becomes an assertion here, and the count must match the script's checks.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import t from 'tap';
import { guestKernels, type KernelSeries, REPO_ROOT, runInVm, vmCheck } from '../support/vm.js';

const SCRIPT = fs.readFileSync(path.join(REPO_ROOT, 'test/vm/cowd-dscow.sh'), 'utf8');

/** check lines in the script, plus the five test/fs/on-device.sh results. */
const EXPECTED = SCRIPT.split('\n').filter((l) => /^check /.test(l.trim())).length + 5;

const installed = guestKernels();
// DMU_VM_KERNELS=6.12 runs one kernel only (both by default).
const wanted = (process.env.DMU_VM_KERNELS ?? '6.1,6.12').split(',') as KernelSeries[];
for (const series of wanted) {
	t.test(`cowd + dscow on ${series}`, async (t) => {
		const k = installed.find((g) => g.series === series);
		if (!k) {
			t.fail(`no ${series} kernel in /boot (run .ci/install-deps)`);
			return;
		}
		await execa('make', ['-s', '-C', path.join(REPO_ROOT, 'kernel'), `KVER=${k.kver}`]);
		const r = await runInVm({
			kernel: series,
			name: `cowd-dscow-${series}`,
			script: SCRIPT,
			disks: [{ sizeMiB: 1024 }],
			timeoutSec: 1500,
		});
		vmCheck(t, r);
		const lines = fs.existsSync(path.join(r.outDir, 'results.txt'))
			? fs.readFileSync(path.join(r.outDir, 'results.txt'), 'utf8').split('\n').filter(Boolean)
			: [];
		for (const l of lines) {
			const m = /^(not )?ok - (.*?)(?: # (.*))?$/.exec(l);
			if (!m) continue;
			if (m[1]) t.fail(`${m[2]}${m[3] ? ` (${m[3]})` : ''}`);
			else t.pass(m[2]!);
		}
		t.equal(lines.length, EXPECTED, 'every check ran');
		if (lines.some((l) => l.startsWith('not ok'))) t.comment(`run dir ${r.outDir}`);
	});
}
