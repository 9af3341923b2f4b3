/**
 * bench/target/report.ts: the parts of the issue-3 benchmark that run on
 * the host. fio output comes from a real (short) fio run on a temp file.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { formatTable, JOBS, meanCi95, parseFio, responderStats, row } from '../../bench/target/report.js';

const run = promisify(execFile);

t.test('parseFio reads a real fio JSON report', async (t) => {
	const dir = await mkdtemp(join(tmpdir(), 'dmu-bench-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const out = join(dir, 'fio.json');
	await run('fio', [
		'--name=w',
		`--filename=${join(dir, 'f')}`,
		'--rw=write',
		'--bs=64k',
		'--size=32M',
		'--ioengine=psync',
		'--output-format=json',
		`--output=${out}`,
	]);
	const n = parseFio(await readFile(out, 'utf8'), 'write');
	t.ok(n.bw > 0 && n.iops > 0 && n.latUs > 0, `bw ${n.bw} iops ${n.iops} lat ${n.latUs}`);
	t.ok(Math.abs(n.bw / n.iops - 65536) < 65536 * 0.01, 'bandwidth / IOPS is the block size');
	// 512 buffered writes of 64 KiB copy 32 MiB in the kernel: some CPU each.
	t.ok(n.cpuUs > 0 && Number.isFinite(n.cpuUs), `cpu per I/O ${n.cpuUs} us`);
	t.ok(Number.isNaN(parseFio(await readFile(out, 'utf8'), 'read').cpuUs), 'no reads: no CPU per read');
	t.same(parseFio(await readFile(out, 'utf8'), 'read').bw, 0, 'nothing was read');
});

t.test('row averages repetitions; the table shows the ratio', async (t) => {
	const job = JOBS[0]!;
	const r = row(
		job,
		[
			{ bw: 100, iops: 1, latUs: 10, cpuUs: 4 },
			{ bw: 300, iops: 3, latUs: 30, cpuUs: 6 },
		],
		[
			{ bw: 100, iops: 1, latUs: 20, cpuUs: 5 },
			{ bw: 100, iops: 1, latUs: 40, cpuUs: 7 },
		],
	);
	t.equal(r.ratio, 0.5);
	t.same(r.ratios, [1, 1 / 3]);
	t.same(r.dmu, { bw: 100, iops: 1, latUs: 30, cpuUs: 6 });
	t.equal(r.cpuRatio, 6 / 5);
	// Pairs 1 and 1/3: mean 2/3, sd (2/3)/sqrt(2), t(1) 12.71: half-width 12.71 / 3.
	t.equal(r.repMean, 2 / 3);
	t.ok(Math.abs(r.ci95 - 12.71 / 3) < 1e-9, `ci95 ${r.ci95}`);
	t.match(formatTable([r]), /seq-write\s+1M .* 20 \/ 30\s+5\.0 \/ 6\.0\s+0\.500\s+0\.667 ± 4\.237\s+1\.00 0\.33$/m);
});

t.test('meanCi95: mean and Student-t 95% half-width', async (t) => {
	const { mean, ci95 } = meanCi95([0.9, 1.0, 1.1, 1.0]);
	t.ok(Math.abs(mean - 1) < 1e-12);
	// sd 0.0816, n 4, t(3) 3.18: 3.18 * 0.0816 / 2
	t.ok(Math.abs(ci95 - (3.18 * Math.sqrt(0.02 / 3)) / 2) < 1e-9, `ci95 ${ci95}`);
	t.ok(Number.isNaN(meanCi95([1]).ci95), 'one sample: no interval');
	// Past the table: the exact quantiles for 29 and 69 degrees of freedom are 2.0452 and 1.9949.
	for (const [n, exact] of [
		[30, 2.0452],
		[70, 1.9949],
	] as const) {
		const xs = Array.from({ length: n }, (_, i): number => (i % 2 === 0 ? 1 : 0));
		const m = meanCi95(xs);
		const sd = Math.sqrt(xs.reduce((a, x) => a + (x - m.mean) ** 2, 0) / (n - 1));
		t.ok(Math.abs(m.ci95 / (sd / Math.sqrt(n)) - exact) < 0.001, `n ${n}: t ${m.ci95 / (sd / Math.sqrt(n))}`);
	}
});

t.test('responderStats splits prewarm and measurement requests', async (t) => {
	const lines = [
		{ ev: 'open' },
		{ ev: 'rx', batch: 1, size: 2, type: 'MAP' },
		{ ev: 'rx', batch: 1, size: 2, type: 'MAP' },
		{ ev: 'tx', type: 'MAP_REPLY' },
		{ ev: 'tx', type: 'MAP_REPLY' },
		{ ev: 'rx', batch: 2, size: 1, type: 'COMMIT' },
		{ ev: 'rx', batch: 3, size: 1, type: 'MAP' },
	].map((l) => JSON.stringify(l));
	t.same(responderStats(`${lines.join('\n')}\n`, 6), { prewarmMaps: 2, measureMaps: 1, batches: 3, maxBatch: 2 });
});
