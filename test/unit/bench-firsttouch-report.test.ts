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
import {
	FIRST_TOUCH_JOBS,
	firstTouchCeiling,
	formatCeiling,
	formatPairs,
	type PairRow,
	pairRow,
	parseDiskRates,
	parseTicks,
	pool,
	regionsNeeded,
	verdict,
} from '../../bench/firsttouch/report.js';

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

t.test('regionsNeeded: a fresh region per cold write pair, one for every warm job', async (t) => {
	const jobs = (...names: string[]) => FIRST_TOUCH_JOBS.filter((j) => names.includes(j.name));
	t.equal(regionsNeeded(jobs('seq-read', 'rand-read-qd1'), 10), 2, 'cold reads share the read region');
	t.equal(regionsNeeded(jobs('seq-write', 'rand-write-qd32'), 10), 22, 'cold writes: one region per pair');
	t.equal(regionsNeeded(jobs('warm-seq-write', 'warm-rand-write-qd32', 'warm-seq-read'), 10), 3, 'warm jobs: one shared region');
	t.equal(regionsNeeded(FIRST_TOUCH_JOBS, 20), 2 + 3 * 20 + 1, 'all jobs');
});

t.test('warm jobs: every shape of the cold ones, against dm-linear, goal 0.95', async (t) => {
	const warm = FIRST_TOUCH_JOBS.filter((j) => j.warm);
	const cold = FIRST_TOUCH_JOBS.filter((j) => !j.warm);
	t.same(
		warm.map((j) => j.name),
		cold.map((j) => `warm-${j.name}`),
		'one warm job per cold shape',
	);
	for (const j of warm) {
		const c = cold.find((x) => `warm-${x.name}` === j.name)!;
		t.same([j.rw, j.bs, j.iodepth], [c.rw, c.bs, c.iodepth], `${j.name}: the cold job's shape`);
		t.same([j.peer, j.goal], ['linear', 0.95], `${j.name}: issue 4's warm goal`);
	}
});

t.test('parseTicks reads the guest\'s cowd-ticks.txt', async (t) => {
	t.same([...parseTicks('seq-write 65\nrand-write-qd1 219\n\nbad line\n')], [
		['seq-write', 65],
		['rand-write-qd1', 219],
	]);
});

t.test('firstTouchCeiling: the disk time of one cold pass, merged first writes or not', async (t) => {
	const rates = { blockRead: 6000, blockWrite: 8000, smallWrite: 12000 };
	const region = 16 * 1048576;
	// 4096 writes over 256 blocks: each block read and written once, plus the small writes.
	const merged = firstTouchCeiling(rates, region, 65536, true);
	const after = firstTouchCeiling(rates, region, 65536, false);
	t.ok(Math.abs(merged - 4096 / (256 / 6000 + 256 / 8000 + 3840 / 12000)) < 1e-6, 'merged: 3840 small writes');
	t.ok(Math.abs(after - 4096 / (256 / 6000 + 256 / 8000 + 4096 / 12000)) < 1e-6, 'copy first: all 4096');
	t.ok(merged > after, 'merging can only help');
	// With 4 KiB blocks every write is a first one: merged, it is the copy alone.
	t.ok(Math.abs(firstTouchCeiling(rates, region, 4096, true) - 1 / (1 / 6000 + 1 / 8000)) < 1e-6);
	const row = { ...fake('rand-write-qd32', [1]), dscowBw: [merged * 4096 * 0.5], peerBw: [after * 4096 * 0.75] };
	const line = formatCeiling(rates, row, region, 65536);
	t.match(line, /dmu\+dscow 10,378 IOPS, dm-snapshot 9,846 IOPS \(1\.054x\)/, 'both ceilings and their ratio');
	t.match(line, /reached 50% and 75%$/, 'each system against its own ceiling');
});

t.test('parseDiskRates reads the three jobs the guest names', async (t) => {
	const dir = await mkdtemp(join(tmpdir(), 'dmu-firsttouch-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const out = join(dir, 'disk-rates.json');
	const file = join(dir, 'disk');
	await run('fio', [
		'--output-format=json',
		`--output=${out}`,
		'--ioengine=psync',
		'--size=1M',
		`--filename=${file}`,
		'--name=block-write',
		'--stonewall',
		'--rw=randwrite',
		'--bs=64k',
		'--name=block-read',
		'--stonewall',
		'--rw=randread',
		'--bs=64k',
		'--name=small-write',
		'--stonewall',
		'--rw=randwrite',
		'--bs=4k',
	]);
	const text = await readFile(out, 'utf8');
	const r = parseDiskRates(text);
	t.ok(r.blockRead > 0 && r.blockWrite > 0 && r.smallWrite > 0, 'each rate from its own job and direction');
	t.throws(() => parseDiskRates(text.replace('"small-write"', '"other"')), /no job small-write/, 'a missing job is an error');
});
