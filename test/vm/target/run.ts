/**
 * Run a dm-userspace scenario script (test/vm/target/*.sh) in a guest and
 * turn its result lines into tap assertions. The scripts record each check
 * as "ok - NAME" / "not ok - NAME # detail" in $DMU_OUT/results.txt; every
 * `check` line of the scripts must have produced a result, so a script that
 * dies half-way fails the test instead of passing fewer checks.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import {
	guestKernels,
	type KernelSeries,
	REPO_ROOT,
	runInVm,
	type TapLike as VmTapLike,
	type VmDisk,
	vmCheck,
} from '../../support/vm.js';

const DIR = path.join(REPO_ROOT, 'test/vm/target');

interface TapLike extends VmTapLike {
	pass(msg: string): void;
	fail(msg: string): void;
}

/** Build dmu.ko for the guest kernel and the C responder. */
export async function buildFor(kver: string): Promise<void> {
	await execa('make', ['-s', '-C', path.join(REPO_ROOT, 'kernel'), `KVER=${kver}`]);
	await execa('make', ['-s', '-C', path.join(REPO_ROOT, 'kernel/tools')]);
}

function countChecks(files: string[]): number {
	let n = 0;
	for (const f of files) {
		n += fs
			.readFileSync(path.join(DIR, f), 'utf8')
			.split('\n')
			.filter((l) => l.startsWith('check ')).length;
	}
	return n;
}

export async function runScenarios(
	t: TapLike,
	series: KernelSeries,
	scripts: string[],
	disks: VmDisk[],
	timeoutSec: number,
): Promise<void> {
	const k = guestKernels().find((g) => g.series === series);
	if (!k) {
		t.fail(`no ${series} kernel in /boot (run .ci/install-deps)`);
		return;
	}
	await buildFor(k.kver);
	const files = ['lib.sh', ...scripts];
	const script = `${files.map((f) => `source test/vm/target/${f}`).join('\n')}\nexit 0\n`;
	const r = await runInVm({
		kernel: series,
		name: `target-${path.basename(scripts[0] ?? 'x', '.sh')}-${series}`,
		script,
		disks,
		timeoutSec,
	});
	t.comment(`${k.kver}: VM ${r.durationMs} ms, run dir ${r.outDir}`);
	vmCheck(t, r);
	const resFile = path.join(r.outDir, 'results.txt');
	const lines = fs.existsSync(resFile) ? fs.readFileSync(resFile, 'utf8').split('\n').filter(Boolean) : [];
	for (const line of lines) {
		const m = /^(not ok|ok) - (.*)$/.exec(line);
		if (!m) continue;
		if (m[1] === 'ok') t.pass(`${series}: ${m[2]}`);
		else t.fail(`${series}: ${m[2]}`);
	}
	t.equal(lines.length, countChecks(files), `${series}: every check ran`);
}
