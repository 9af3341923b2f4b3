/**
 * dmu disks under a real Xen 4.17 (in QEMU): `xl create` with both disk
 * spellings, guests writing through block-dmu + cowd + blkback, teardown on
 * power-off and on destroy, two guests on one base, a dscow refused to a
 * second read-write guest, failing adds, and `dmu backend` restarting cowd
 * while a guest writes. Everything runs in one boot (a boot and each
 * `xl create` cost tens of seconds under TCG); test/xen/dmu/dom0.sh records
 * each check as a step and this file asserts every one of them ran and
 * passed. See test/xen/dmu/README.md.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import t, { type Test } from 'tap';
import { readSteps, runInXen, xenArtifacts } from '../support/xen.js';
import { repoRoot } from './harness/build.js';

const repo = repoRoot();
const here = join(repo, 'test/xen/dmu');

/** Every step dom0.sh records, in order: a missing one fails the test. */
const EXPECTED_STEPS = [
	'setup-modules',
	'setup-dscow',
	'setup-clean',
	's1-create',
	's1-guest-powered-off',
	's1-guest-wrote',
	's1-nothing-left',
	's1-pattern-read-back',
	's1-base-unchanged',
	's1-dscow-check',
	's1-nothing-left-after-readback',
	's2-stock-xl-rejects',
	's2-stock-nothing-left',
	's2-patched-create',
	's2-guest-powered-off',
	's2-guest-wrote',
	's2-nothing-left',
	's2-pattern-read-back',
	's2-base-unchanged',
	's3-create-paused',
	's3-device-there',
	's3-cowd-running',
	's3-loops-there',
	's3-backend-connected',
	's3-destroy',
	's3-nothing-left',
	's4-create-first',
	's4-create-second',
	's4-two-devices',
	's4-devices',
	's4-two-cowd',
	's4-destroy-first',
	's4-second-still-there',
	's4-destroy-second',
	's4-nothing-left',
	's4-base-unchanged',
	's5-create-first',
	's5-second-create-fails',
	's5-our-message',
	's5-second-guest-gone',
	's5-first-disk-untouched',
	's5-no-extra-loops',
	's5-destroy-first',
	's5-nothing-left',
	's6-missing-image-fails',
	's6-missing-image-message',
	's6-missing-image-nothing-left',
	's6-bad-spec-fails',
	's6-bad-spec-message',
	's6-bad-spec-nothing-left',
	's6-no-domains-left',
	's7-backend-up',
	's7-create',
	's7-guest-writing',
	's7-backend-restarted-cowd',
	's7-guest-writes-after-cowd-kill',
	's7-backend-exits-on-sigterm',
	's7-guest-writes-without-backend',
	's7-backend-adopted-worker',
	's7-guest-powered-off',
	's7-guest-io-ok',
	's7-nothing-left',
	's7-second-backend-exits-on-sigterm',
	's7-base-unchanged',
	's7-dscow-check',
	'all-done',
];

/** The patched libxlutil (legacy `dmu:` spelling), built once on the host. */
async function patchedLibxlutil(): Promise<string> {
	const dir = join(repo, '.cache/libxlutil');
	if (!existsSync(join(dir, 'libxlutil.so.4.17'))) await execa(join(repo, 'tools/xen-scripts/build-libxlutil'), [dir]);
	return dir;
}

/** dom0 insmods the module built for the domU/dom0 kernel. */
async function kernelModule(kver: string): Promise<void> {
	if (!existsSync(join(repo, 'kernel/build', kver, 'dmu.ko'))) await execa('make', ['-C', join(repo, 'kernel'), `KVER=${kver}`]);
}

/**
 * DMU_XEN_SCENARIOS="s1 s7" runs only those scenarios (setup always runs),
 * for iterating on one of them; the default is all.
 */
const ALL = ['s1', 's2', 's3', 's4', 's5', 's6', 's7'];
const scenarios = (process.env.DMU_XEN_SCENARIOS ?? ALL.join(' ')).split(/\s+/).filter(Boolean);
for (const sc of scenarios) if (!ALL.includes(sc)) throw new Error(`DMU_XEN_SCENARIOS: unknown scenario ${sc}`);
const expected = EXPECTED_STEPS.filter((s) => !/^s\d-/.test(s) || scenarios.includes(s.slice(0, 2)));

t.test('dmu disks under Xen 4.17: xl create, teardown, sharing, refusals, daemon restarts', async (t) => {
	const art = await xenArtifacts();
	await kernelModule(art.kver);
	const libxlutil = await patchedLibxlutil();
	const r = await runInXen({
		name: 'dmu-e2e',
		scriptsDir: join(repo, 'tools/xen-scripts'),
		script: await readFile(join(here, 'dom0.sh'), 'utf8'),
		domuScript: await readFile(join(here, 'domu.sh'), 'utf8'),
		env: { DMU_LIBXLUTIL: libxlutil, DMU_SCENARIOS: scenarios.join(' ') },
		timeoutSec: 2400,
	});
	t.comment(`run dir ${r.outDir}, ${Math.round(r.durationMs / 1000)} s (including any wait for the VM lock)`);
	t.equal(r.timedOut, false, 'QEMU finished before the timeout');
	t.equal(r.exitCode, 0, 'dom0 script exit status');

	const steps = await readSteps(r.outDir);
	let prev = steps[0]?.uptime ?? 0;
	for (const s of steps) {
		t.comment(`${s.step}: +${(s.uptime - prev).toFixed(1)} s`);
		prev = s.uptime;
	}
	for (const name of expected) {
		const s = steps.find((x) => x.step === name);
		t.ok(s, `step ${name} ran`);
		if (s) t.ok(s.ok, `step ${name} (status ${s.status}: ${s.detail.slice(0, 600)})`);
	}
	t.same(r.kernelProblems, [], 'no kernel or hypervisor warnings (Xen, dom0, guests)');
	if (r.exitCode !== 0 || steps.some((s) => !s.ok)) {
		t.comment(r.console.split('\n').slice(-40).join('\n'));
		await postMortem(t, r.outDir);
	}
});

/**
 * A CI log is all there is after a failed CI run: print the end of each
 * guest's xl log (libxl's view of the hotplug script) and of each disk's
 * cowd log, with the run directory they came from.
 */
async function postMortem(t: Test, outDir: string): Promise<void> {
	const tails: string[] = [];
	for (const dir of ['xen-logs', 'dmu-logs']) {
		const files = await readdir(join(outDir, dir)).catch(() => [] as string[]);
		for (const f of files.filter((f) => f.endsWith('.log') && (dir === 'dmu-logs' || f.startsWith('xl-')))) {
			const text = await readFile(join(outDir, dir, f), 'utf8').catch(() => '');
			tails.push(`--- ${dir}/${f} (last 12 lines)`, ...text.trimEnd().split('\n').slice(-12));
		}
	}
	t.comment(tails.join('\n'));
}
