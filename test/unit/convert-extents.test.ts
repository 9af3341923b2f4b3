/**
 * Data extents of sparse files (lseek SEEK_DATA/SEEK_HOLE through perl), as
 * dmu convert uses them to skip a raw source's holes, on this host's real
 * file system.
 */
import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { dataExtents, overlaps } from '../../src/convert/extents.js';

const MiB = 1n << 20n;

t.test('a sparse file: data found where written, holes left out', async (t) => {
	const dir = await mkdtemp(join(tmpdir(), 'dmu-extents-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const path = join(dir, 'sparse.raw');
	const fh = await open(path, 'w');
	await fh.write(Buffer.alloc(65536, 0xab), 0, 65536, Number(MiB));
	await fh.write(Buffer.alloc(4096, 0xcd), 0, 4096, Number(5n * MiB));
	await fh.truncate(Number(8n * MiB));
	await fh.close();
	const ext = await dataExtents(path);
	t.ok(ext, 'this file system answers SEEK_DATA');
	if (!ext) return;
	const covers = (a: bigint, b: bigint) => ext.some(([s, e]) => s <= a && e >= b);
	t.ok(covers(MiB, MiB + 65536n), 'the 64 KiB written at 1 MiB is data');
	t.ok(covers(5n * MiB, 5n * MiB + 4096n), 'the 4 KiB written at 5 MiB is data');
	t.same(overlaps(ext, 2n * MiB, 5n * MiB), [], 'nothing between them');
	t.ok(ext.every(([s, e]) => s < e && e <= 8n * MiB), 'ranges are well formed and inside the file');

	const holes = join(dir, 'holes.raw');
	await writeFile(holes, '');
	await truncate(holes, Number(MiB));
	t.same(await dataExtents(holes), [], 'a file of holes has no data');
	t.equal(await dataExtents(join(dir, 'missing')), undefined, 'no answer: the caller reads everything');
});

t.test('overlaps clips extents to a range', async (t) => {
	const ext = [
		[0n, 10n],
		[20n, 30n],
		[40n, 50n],
	] as const;
	t.same(overlaps(ext, 5n, 25n), [
		[5n, 10n],
		[20n, 25n],
	]);
	t.same(overlaps(ext, 10n, 20n), []);
	t.same(overlaps(ext, 45n, 100n), [[45n, 50n]]);
	t.same(overlaps(ext, 0n, 100n), ext.map(([a, b]) => [a, b]));
	t.same(overlaps([], 0n, 100n), []);
});
