/**
 * bench/firsttouch/report.ts: the host half of the issue-4 paired
 * benchmark. The fio output comes from a real (short) fio run on temp
 * files, with jobs named as the guest names them.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { FIRST_TOUCH_JOBS, formatPairs, type PairRow, pairRow, parseTicks, pool, verdict } from '../../bench/firsttouch/report.js';

const run = promisify(execFile);
const seqWrite = FIRST_TOUCH_JOBS.find((j) => j.name === 'seq-write')!;

t.test('pairRow pairs dscow.N with the peer job of the same N', async (t) => {
	const dir = await mkdtemp(join(tmpdir(), 'dmu-firsttouch-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const out = join(dir, 'fio.json');
	// Two pairs, stonewalled as in the guest; the peer's runs write half as much.
	const args = ['--rw=write', '--bs=64k', '--ioengine=psync', '--output-format=json', `--output=${out}`];
	for (const [name, size] of [
		['dscow.1', '8M'],
		['snapshot.1', '4M'],
		['snapshot.2', '4M'],
		['dscow.2', '8M'],
	] as const) {
		args.push(`--name=${name}`, '--stonewall', `--filename=${join(dir, name)}`, `--size=${size}`);
	}
	await run('fio', args);
	const text = await readFile(out, 'utf8');
	const r = pairRow(seqWrite, text, 2, 150);
	t.equal(r.ratios.length, 2, 'one ratio per pair');
	t.ok(r.dscowBw.every((x) => x > 0) && r.peerBw.every((x) => x > 0), 'bandwidths read from the right jobs');
	t.same(
		r.ratios,
		r.dscowBw.map((x, i) => x / r.peerBw[i]!),
		'ratio = dscow / peer, pair by pair',
	);
	t.equal(r.cowdCpuS, 1.5, 'ticks are 1/100 s');
	t.equal(r.peer, 'snapshot');
	t.throws(() => pairRow(seqWrite, text, 3, 0), /no job dscow\.3/, 'a missing pair is an error, not a NaN');
});

const fake = (job: string, ratios: number[], cpu = 1): PairRow => ({
	job,
	peer: 'snapshot',
	goal: 1,
	dscowBw: ratios,
	peerBw: ratios.map(() => 1),
	ratios,
	mean: Number.NaN,
	ci95: Number.NaN,
	cowdCpuS: cpu,
});

t.test('pool puts the pairs of several runs in one sample', async (t) => {
	const [p] = pool([[fake('seq-write', [1.1, 1.2], 2)], [fake('seq-write', [1.3, 1.0], 4)]]);
	t.same(p!.ratios, [1.1, 1.2, 1.3, 1.0]);
	t.ok(Math.abs(p!.mean - 1.15) < 1e-12, `mean ${p!.mean}`);
	// sd of the four is sqrt(0.05 / 3); Student's t for 3 degrees of freedom is 3.18.
	t.ok(Math.abs(p!.ci95 - (3.18 * Math.sqrt(0.05 / 3)) / 2) < 1e-9, `ci95 ${p!.ci95}`);
	t.equal(p!.cowdCpuS, 3, 'cowd CPU: the mean over runs');
});

t.test('verdict: only an interval wholly on one side of the goal decides', async (t) => {
	const row = (mean: number, ci95: number): PairRow => ({ ...fake('seq-write', [mean]), mean, ci95 });
	t.equal(verdict(row(1.1, 0.05)), 'PASS');
	t.equal(verdict(row(0.9, 0.05)), 'MISS');
	t.equal(verdict(row(1.02, 0.05)), 'UNDECIDED');
	t.equal(verdict(row(0.98, 0.05)), 'UNDECIDED');
	t.equal(verdict(row(1.0, Number.NaN)), 'PASS', 'one pair: the mean alone');
});

t.test('the table shows each job with its peer, interval and pairs', async (t) => {
	const [r] = pool([[fake('rand-write-qd32', [0.9, 1.1], 2.5)]]);
	const table = formatPairs([r!]);
	t.match(table, /^job\s+vs\s+dmu\+dscow\s+peer/);
	t.match(table, /rand-write-qd32\s+dm-snapshot\s+0 IOPS\s+0 IOPS\s+2\s+1\.000 ± 1\.271\s+>= 1\s+UNDECIDED\s+2\.50 s\s+0\.90 1\.10$/m);
});

t.test('parseTicks reads the guest\'s cowd-ticks.txt', async (t) => {
	t.same([...parseTicks('seq-write 65\nrand-write-qd1 219\n\nbad line\n')], [
		['seq-write', 65],
		['rand-write-qd1', 219],
	]);
});
