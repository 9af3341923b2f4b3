/**
 * The bulk allocation path of a conversion into qcow2
 * (Qcow2Image.allocateRuns, Refcounts.allocRun): many clusters per call,
 * L2 entries set in memory, refcounts counted per run. Judged by QEMU:
 * `qemu-img check` finds no errors and no leaks, `qemu-img compare`
 * finds the source's bytes, and only clusters holding data are allocated.
 * Cluster sizes from 512 B (an L2 table every 32 KiB of disk, a refcount
 * block every 256 clusters, the refcount table outgrown) to 2 MiB (a
 * partial last cluster), both qcow2 versions, refcount widths, extended
 * L2; and allocateRuns over clusters that already hold something, which
 * go the map() way.
 */
import { open as fsOpen, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { convert } from '../../src/convert/convert.js';
import { BlockEngine } from '../../src/plugins/engine.js';
import { Qcow2Image } from '../../src/plugins/qcow2/image.js';
import { plugin } from '../../src/plugins/qcow2/index.js';
import { qemuCheck, qemuCompare, qemuCreate, qemuIo, tempDir } from '../support/qemu-img.js';
import { prng } from '../support/prng.js';

const { dir, cleanup } = await tempDir('dmu-convert-qcow2-bulk-');
t.teardown(cleanup);

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * A sparse raw source of `size` bytes: random data extents (unaligned,
 * 1 B .. `maxExtent`), some ranges written with zeros (allocated in the
 * file, reading as zero), holes elsewhere. Returns its bytes.
 */
async function makeSource(path: string, size: number, seed: number, extents: number, maxExtent: number): Promise<Buffer> {
	const rnd = prng(seed);
	const bytes = Buffer.alloc(size);
	const fh = await fsOpen(path, 'w');
	try {
		await fh.truncate(size);
		for (let i = 0; i < extents; i++) {
			const len = 1 + Math.floor(rnd() * maxExtent);
			const off = Math.floor(rnd() * (size - len));
			const data = Buffer.alloc(len);
			// One extent in eight is written with zeros: it must stay unallocated.
			if (i % 8 !== 7) for (let j = 0; j < len; j++) data[j] = 1 + Math.floor(rnd() * 255);
			await fh.write(data, 0, len, off);
			data.copy(bytes, off);
		}
		// The last byte of the disk holds data: the last (maybe partial) cluster is written.
		await fh.write(Buffer.from([0x5a]), 0, 1, size - 1);
		bytes[size - 1] = 0x5a;
	} finally {
		await fh.close();
	}
	return bytes;
}

/** Clusters of `bytes` that hold anything but zeros: what a sparse output allocates. */
function dataClusters(bytes: Buffer, cs: number): number {
	let n = 0;
	for (let at = 0; at < bytes.length; at += cs) {
		const c = bytes.subarray(at, Math.min(at + cs, bytes.length));
		if (c.some((b) => b !== 0)) n++;
	}
	return n;
}

const cases: {
	name: string;
	cs: number;
	size: number;
	extents: number;
	maxExtent: number;
	options?: Record<string, string>;
	/** The data outgrows the refcount table create made (one cluster): it must have moved. */
	tableOutgrown?: boolean;
}[] = [
	// 16 MiB of 512 B clusters: 512 L2 tables, a file past 8 MiB outgrows the one-cluster refcount table.
	{ name: '512 B clusters, v3', cs: 512, size: 16 * MiB, extents: 700, maxExtent: 64 * KiB, tableOutgrown: true },
	{ name: '512 B clusters, v2', cs: 512, size: 6 * MiB + 512, extents: 150, maxExtent: 64 * KiB, options: { compat: '0.10' } },
	{ name: '512 B clusters, 1-bit refcounts', cs: 512, size: 8 * MiB, extents: 200, maxExtent: 32 * KiB, options: { refcount_bits: '1' } },
	{ name: '4 KiB clusters, 64-bit refcounts', cs: 4 * KiB, size: 24 * MiB, extents: 300, maxExtent: 256 * KiB, options: { refcount_bits: '64' } },
	{ name: '64 KiB clusters', cs: 64 * KiB, size: 40 * MiB + 4 * KiB, extents: 120, maxExtent: 2 * MiB },
	{ name: '64 KiB clusters, extended L2', cs: 64 * KiB, size: 20 * MiB, extents: 60, maxExtent: MiB, options: { extended_l2: 'on' } },
	{ name: '2 MiB clusters, partial last cluster', cs: 2 * MiB, size: 37 * MiB + 4608, extents: 30, maxExtent: 3 * MiB },
];

for (const c of cases) {
	t.test(`convert raw -> qcow2, ${c.name}`, async (t) => {
		const src = join(dir, `${c.cs}-${c.size}.raw`);
		const dst = join(dir, `${c.cs}-${c.size}-${Object.keys(c.options ?? {}).join('_')}.qcow2`);
		const bytes = await makeSource(src, c.size, c.cs + c.size, c.extents, c.maxExtent);
		const stats = await convert({ src, srcFormat: 'raw', dst, dstFormat: 'qcow2', blockSize: c.cs, ...(c.options ? { options: c.options } : {}) });
		t.equal(stats.size, BigInt(c.size), 'the whole disk is converted');
		const check = await qemuCheck(dst);
		t.same([check.corruptions, check.leaks, check.exitCode], [0, 0, 0], `qemu-img check is clean${check.exitCode ? `: ${check.raw.slice(0, 400)}` : ''}`);
		const cmp = await qemuCompare(dst, src);
		t.equal(cmp.exitCode, 0, `qemu-img compare equal ${cmp.stdout.trim()}`);
		const info = await plugin.info(dst);
		t.equal(info.allocatedBlocks, BigInt(dataClusters(bytes, c.cs)), 'only clusters holding data are allocated');
		t.equal(info.blockSize, c.cs, 'cluster size as asked');
		const ours = await plugin.check(dst);
		t.same([ours.corruptions, ours.leaks], [[], []], 'dmu check agrees');
		if (c.tableOutgrown) {
			const header = Buffer.alloc(64);
			const fh = await fsOpen(dst, 'r');
			await fh.read(header, 0, 64, 0);
			await fh.close();
			t.not(Number(header.readBigUInt64BE(48)), c.cs, 'the refcount table moved to a larger place');
		}
	});
}

t.test('allocateRuns over clusters that already hold something goes the map() way', async (t) => {
	const path = join(dir, 'mixed.qcow2');
	const cs = 4 * KiB;
	const size = 4 * MiB;
	await qemuCreate(path, 'qcow2', { size, options: { cluster_size: String(cs) } });
	// Data at clusters 3..4, a zero cluster at 6 (v3 flag), data at 10; the rest unallocated.
	await qemuIo(path, ['write -P 0x11 12k 8k', 'write -z 24k 4k', 'write -P 0x22 40k 4k']);
	const expected = Buffer.alloc(size);
	expected.fill(0x11, 12 * KiB, 20 * KiB);
	expected.fill(0x22, 40 * KiB, 44 * KiB);

	const engine = await BlockEngine.open(plugin, path);
	const image = engine.image;
	if (!(image instanceof Qcow2Image)) throw new Error('not a Qcow2Image');
	// Clusters 2..12 written whole: over data, a zero cluster, and unallocated ones.
	const runs = await image.allocateRuns(2, 11);
	t.same(
		runs.reduce((n, r) => n + r.count, 0),
		11,
		'every cluster gets a place',
	);
	t.same(
		runs.map((r) => r.block),
		[...runs.map((r) => r.block)].sort((a, b) => a - b),
		'runs come in guest order',
	);
	for (const r of runs) {
		const data = Buffer.alloc(r.count * cs);
		for (let i = 0; i < r.count; i++) data.fill(0x30 + r.block + i, i * cs, (i + 1) * cs);
		await engine.files[0]!.write(data, 0, data.length, r.host);
		data.copy(expected, r.block * cs);
	}
	// Past the last cluster of the disk is refused.
	await t.rejects(image.allocateRuns(size / cs - 1, 2), { code: 'DMU_ERR_RANGE' }, 'runs past the disk are refused');
	await engine.close();

	const check = await qemuCheck(path);
	t.same([check.corruptions, check.leaks, check.exitCode], [0, 0, 0], `qemu-img check is clean${check.exitCode ? `: ${check.raw.slice(0, 400)}` : ''}`);
	const ref = `${path}.expected.raw`;
	await writeFile(ref, expected);
	t.equal((await qemuCompare(path, ref)).exitCode, 0, 'qemu-img compare equal');
});
