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
import { formatTable, JOBS, parseFio, responderStats, row } from '../../bench/target/report.js';

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
		'--size=4M',
		'--ioengine=psync',
		'--output-format=json',
		`--output=${out}`,
	]);
	const n = parseFio(await readFile(out, 'utf8'), 'write');
	t.ok(n.bw > 0 && n.iops > 0 && n.latUs > 0, `bw ${n.bw} iops ${n.iops} lat ${n.latUs}`);
	t.ok(Math.abs(n.bw / n.iops - 65536) < 65536 * 0.01, 'bandwidth / IOPS is the block size');
	t.same(parseFio(await readFile(out, 'utf8'), 'read').bw, 0, 'nothing was read');
});

t.test('row averages repetitions; the table shows the ratio', async (t) => {
	const job = JOBS[0]!;
	const r = row(
		job,
		[
			{ bw: 100, iops: 1, latUs: 10 },
			{ bw: 300, iops: 3, latUs: 30 },
		],
		[
			{ bw: 100, iops: 1, latUs: 20 },
			{ bw: 100, iops: 1, latUs: 40 },
		],
	);
	t.equal(r.ratio, 0.5);
	t.same(r.ratios, [1, 1 / 3]);
	t.same(r.dmu, { bw: 100, iops: 1, latUs: 30 });
	t.match(formatTable([r]), /seq-write\s+1M .* 0\.500\s+1\.00 0\.33$/m);
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
