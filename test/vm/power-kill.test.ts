/**
 * Power kill: QEMU is SIGKILLed at random moments while the guest writes
 * and fsyncs records on ext4 over a dscow disk served by cowd; the next boot
 * of the same disk must recover (both ext4s check clean, `dmu check` finds
 * no corruption) and hold every record acknowledged before the kill. The
 * disk accumulates cuts: each boot checks, then goes on writing until the
 * next kill. Guest side: test/vm/power-kill.sh, test/vm/power-kill-records.ts.
 *
 *   PK_CUTS     cut points per kernel (default 20)
 *   PK_KERNELS  comma-separated series (default 6.12; "6.1,6.12" for both)
 *   PK_SEED     PRNG seed for the kill delays (default random; printed)
 *   PK_WINDOW_MS  delays are uniform in [0, PK_WINDOW_MS) after the window
 *               opens (default 7000). In 30% of the windows (and in the
 *               first boot) cowd is started in the window, so cuts land in
 *               its start, commit and detach too; otherwise the records.
 *
 * tools/power-kill/nightly.sh runs more cuts on both kernels.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import t from 'tap';
import { prng } from '../support/prng.js';
import { consoleTail, guestKernels, type KernelSeries, REPO_ROOT, runInVm, type VmResult } from '../support/vm.js';

const SCRIPT = path.join(REPO_ROOT, 'test/vm/power-kill.sh');
const CUTS = Number(process.env.PK_CUTS ?? 20);
const SERIES = (process.env.PK_KERNELS ?? '6.12').split(',').filter(Boolean) as KernelSeries[];
const SEED = Number(process.env.PK_SEED ?? Math.floor(Math.random() * 2 ** 31));
const WINDOW_MS = Number(process.env.PK_WINDOW_MS ?? 7000);
const RESTART_SHARE = 0.3;
/** Host disk: outer ext4 with the 256 MiB base and the image (sparse). */
const DISK_MiB = 1024;

const scriptText = fs.readFileSync(SCRIPT, 'utf8');
const count = (fn: string): number => scriptText.split('\n').filter((l) => new RegExp(`^\\s*${fn} `).test(l)).length;
const CHECKS = { setup: count('scheck'), recover: count('rcheck'), final: count('fcheck') };

const read = (dir: string, f: string): string => {
	try {
		return fs.readFileSync(path.join(dir, f), 'utf8');
	} catch {
		return '';
	}
};
const lines = (s: string): string[] => s.split('\n').filter(Boolean);
const tail = (s: string, n: number): string => lines(s).slice(-n).join('\n');

interface Cut {
	n: number;
	delayMs: number;
	restart: boolean;
	phase: string;
	acked: number;
	vmMs: number;
	dmuCheck: string;
}

t.comment(`power-kill: seed ${SEED} (replay with PK_SEED=${SEED}), ${CUTS} cuts per kernel, window ${WINDOW_MS} ms`);

for (const series of SERIES) {
	t.test(`power kill on ${series}: ${CUTS} random cuts, fsck clean, every fsynced record present`, async (t) => {
		const k = guestKernels().find((g) => g.series === series);
		if (!k) return t.fail(`no ${series} kernel in /boot (run .ci/install-deps)`);
		await execa('make', ['-s', '-C', path.join(REPO_ROOT, 'kernel'), `KVER=${k.kver}`]);
		const stamp = new Date().toISOString().replace(/[:.]/g, '');
		const state = path.join(REPO_ROOT, '.cache/power-kill', `${series}-${stamp}-${process.pid}`);
		fs.mkdirSync(state, { recursive: true });
		const disk = path.join(state, 'disk.img');
		fs.writeFileSync(disk, '');
		fs.truncateSync(disk, DISK_MiB * 1024 * 1024);
		const expectFile = path.join(state, 'expected.txt');
		const acked: string[] = [];
		const cuts: Cut[] = [];
		const rnd = prng(SEED ^ (series === '6.1' ? 0x61 : 0x612));
		let failed = false;

		const boot = async (mode: 'setup' | 'cut' | 'final', n: number, delayMs?: number, restart = false): Promise<VmResult> => {
			// Written before the VM starts: the guest reads it through the 9p root.
			fs.writeFileSync(expectFile, acked.map((id) => `${id}\n`).join(''));
			return runInVm({
				kernel: series,
				name: `power-kill-${series}-${n}`,
				script: `source ${SCRIPT}`,
				disks: [{ path: disk }],
				env: { PK_MODE: mode, PK_CUT: String(n), PK_EXPECT: expectFile, PK_RESTART: restart ? '1' : '0' },
				timeoutSec: 300,
				...(delayMs !== undefined ? { killWhen: { file: 'cut-now', afterMs: delayMs } } : {}),
			});
		};
		/** Assert one boot's checks; on failure, print what helps replay it. */
		const assertBoot = (r: VmResult, what: string, expectedChecks: number, killed: boolean): boolean => {
			const res = lines(read(r.outDir, 'results.txt'));
			const bad = res.filter((l) => !l.startsWith('ok - '));
			const verify = read(r.outDir, 'verify.txt.done');
			const ok = [
				t.equal(r.killed === true, killed, `${what}: ${killed ? 'killed in the window' : 'ran to the end'}`),
				killed || t.equal(r.exitCode, 0, `${what}: guest script exited 0`),
				t.equal(r.timedOut, false, `${what}: no timeout`),
				t.same(r.kernelProblems, [], `${what}: no kernel problems`),
				t.same(bad, [], `${what}: guest checks pass`),
				t.equal(res.length, expectedChecks, `${what}: all ${expectedChecks} guest checks ran`),
				t.match(verify, new RegExp(`^checked ${acked.length} `), `${what}: the guest checked all ${acked.length} acknowledged records`),
			].every(Boolean);
			if (!ok) {
				t.comment(
					[
						`FAILED ${what}; seed ${SEED} (PK_SEED=${SEED}), kernel ${series}, run dir ${r.outDir}, disk ${disk}`,
						`previous cut: ${JSON.stringify(cuts[cuts.length - 1] ?? null)}`,
						`verify: ${verify.trim()}`,
						`dmu check: ${tail(read(r.outDir, 'dmu-check.rc'), 3)}`,
						`phases (guest uptime): ${lines(read(r.outDir, 'phases.txt')).join(' > ')}`,
						`console tail:\n${consoleTail(r, 40)}`,
						`cowd log tail:\n${tail(read(r.outDir, 'cowd-pk.log'), 15)}`,
						`records log:\n${tail(read(r.outDir, 'records.log'), 10)}`,
					].join('\n'),
				);
			}
			return ok;
		};

		for (let n = 1; n <= CUTS && !failed; n++) {
			const delayMs = Math.floor(rnd() * WINDOW_MS);
			// Some windows stop and restart cowd first, so cuts also land in its commit, detach and start.
			const restart = rnd() < RESTART_SHARE;
			const r = await boot(n === 1 ? 'setup' : 'cut', n, delayMs, restart);
			const what = `cut ${n}/${CUTS} (delay ${delayMs} ms${restart ? ', cowd restarted in the window' : ''})`;
			const ok = assertBoot(r, what, n === 1 ? CHECKS.setup : CHECKS.recover, true);
			const newIds = lines(read(r.outDir, 'acked.txt'));
			const wellFormed = newIds.every((id, i) => id === `${n}-${i + 1}`);
			t.ok(wellFormed, `${what}: acknowledged ids are ${n}-1..${n}-${newIds.length}`);
			acked.push(...newIds);
			const phases = lines(read(r.outDir, 'phases.txt'));
			const c: Cut = {
				n,
				delayMs,
				restart,
				phase: phases[phases.length - 1]?.split(' ')[1] ?? '?',
				acked: newIds.length,
				vmMs: r.durationMs,
				dmuCheck: lines(read(r.outDir, 'dmu-check.rc')).pop() ?? '',
			};
			cuts.push(c);
			t.comment(`cut ${n}: killed ${delayMs} ms into the window, during "${c.phase}", ${c.acked} new records (${acked.length} in all), VM ${(r.durationMs / 1000).toFixed(1)} s; last dmu check: ${c.dmuCheck || '-'}`);
			if (!ok || !wellFormed) failed = true;
		}
		if (!failed) {
			const r = await boot('final', CUTS + 1);
			if (!assertBoot(r, `final check after cut ${CUTS}`, CHECKS.recover + CHECKS.final, false)) failed = true;
		}
		const byPhase = new Map<string, number>();
		for (const c of cuts) byPhase.set(c.phase, (byPhase.get(c.phase) ?? 0) + 1);
		const summary = {
			kernel: k.kver,
			seed: SEED,
			cutsRun: cuts.length,
			cutsPlanned: CUTS,
			passed: !failed,
			records: acked.length,
			leaksReported: cuts.filter((c) => / 3$/.test(c.dmuCheck)).length,
			byPhase: Object.fromEntries(byPhase),
			vmSeconds: Math.round(cuts.reduce((s, c) => s + c.vmMs, 0) / 1000),
			cuts,
		};
		fs.writeFileSync(path.join(state, 'summary.json'), `${JSON.stringify(summary, null, 2)}\n`);
		t.comment(
			`power-kill ${series}: ${cuts.length}/${CUTS} cuts ran${failed ? ', FAILED' : ', all recovered'}; seed ${SEED}; ${acked.length} records acknowledged; kills by phase ${JSON.stringify(summary.byPhase)}; summary ${path.join(state, 'summary.json')}`,
		);
		t.equal(cuts.length, CUTS, 'every planned cut point ran');
		// The disk is 100s of MiB: keep it only when it shows a failure.
		if (!failed) fs.rmSync(disk, { force: true });
	});
}
