/**
 * bench/hitcost: abio.c (built with gcc and run on two real files with
 * O_DIRECT) and the host side that reads its rounds.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { formatHitcost, hitcostRow, parseRounds } from '../../bench/hitcost/report.js';
import { REPO_ROOT } from '../support/vm.js';

const run = promisify(execFile);

t.test('abio times the same I/Os on both files, a line per round', async (t) => {
	// Under the repo, not the temp folder: O_DIRECT needs a disk file
	// system, and /tmp may be a tmpfs.
	await mkdir(join(REPO_ROOT, '.cache'), { recursive: true });
	const dir = await mkdtemp(join(REPO_ROOT, '.cache', 'hitcost-test-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const abio = join(dir, 'abio');
	await run('gcc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', abio, join(REPO_ROOT, 'bench/hitcost/abio.c')]);
	const a = join(dir, 'a');
	const b = join(dir, 'b');
	for (const f of [a, b]) await writeFile(f, Buffer.alloc(2 << 20));

	for (const flags of [[], ['-r'], ['-w'], ['-w', '-r']]) {
		const { stdout } = await run(abio, [...flags, '-b', '4096', '-s', '2', '-n', '16', '-k', '5', a, b]);
		const ratios = parseRounds(stdout);
		t.equal(ratios.length, 5, `${flags.join(' ') || 'seq read'}: one ratio per round`);
		t.ok(ratios.every((x) => Number.isFinite(x) && x > 0), 'each a positive ratio');
	}

	const bad = await run(abio, ['-b', '1000', '-s', '2', '-n', '1', '-k', '1', a, b]).catch((e: { code: number; stderr: string }) => e);
	t.match(bad, { code: 2, stderr: /multiple of 512/ }, 'an I/O size O_DIRECT cannot take is refused');
	const missing = await run(abio, ['-b', '4096', '-s', '2', '-n', '1', '-k', '1', a, join(dir, 'nope')]).catch((e: { code: number; stderr: string }) => e);
	t.match(missing, { code: 1, stderr: /cannot open .*nope/ }, 'a missing device is named');
	// 4 MiB span over a 2 MiB file: reads past the end are short.
	const short = await run(abio, ['-b', '1048576', '-s', '4', '-n', '4', '-k', '1', a, b]).catch((e: { code: number; stderr: string }) => e);
	t.match(short, { code: 1, stderr: /short transfer/ }, 'a short read fails the run');
});

t.test('parseRounds: dm-linear time over dmu time; bad lines refused', async (t) => {
	t.same(parseRounds('0.002 0.004\n0.003 0.003\n\n'), [0.5, 1]);
	t.throws(() => parseRounds('0.002\n'), /line 1 is not two positive times/);
	t.throws(() => parseRounds('0.002 0.003\n0.002 0\n'), /line 2/);
});

t.test('hitcostRow pools passes; the table shows mean, interval and each pass', async (t) => {
	const r = hitcostRow('seq-read-1m', 'kernel/build', [
		[0.9, 1.0, 1.1],
		[0.8, 0.9, 1.0],
	]);
	t.equal(r.rounds, 6);
	t.ok(Math.abs(r.mean - 0.95) < 1e-12, `mean ${r.mean}`);
	t.same(
		r.passes.map((p) => p.toFixed(3)),
		['1.000', '0.900'],
	);
	t.ok(r.ci95 > 0 && r.ci95 < 0.2, `interval ${r.ci95}`);
	const table = formatHitcost([r]);
	t.match(table, /seq-read-1m\s+kernel\/build\s+6\s+0\.950 ± 0\.\d{3}\s+1\.000 0\.900/);
});
