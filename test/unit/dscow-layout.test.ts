/**
 * dscow on-disk header: geometry matches the 2006 tool, and a hostile header
 * is refused with one line before anything is written to the file.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import t from 'tap';
import { isDmuError } from '../../src/errors.js';
import { plugin } from '../../src/plugins/dscow/index.js';
import { geometry, HEADER_SIZE } from '../../src/plugins/dscow/layout.js';

const tmp = async (t: { teardown(fn: () => unknown): void }) => {
	const dir = await mkdtemp(join(tmpdir(), 'dscow-layout-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	return dir;
};

t.test('geometry matches the seed and the brief', async (t) => {
	// The seed: a 537919488-byte base with 64 KiB blocks.
	t.strictSame(geometry(537919488n, 65536), { blockCount: 8208n, bitmapWords: 257n, bitmapOffset: 4096n, liveOffset: 4096n + 257n * 4n, firstBlock: 65536n });
	// 1 GiB, 64 KiB blocks: 16384 blocks, 512 words, first block at 64 KiB.
	t.strictSame(geometry(1n << 30n, 65536), { blockCount: 16384n, bitmapWords: 512n, bitmapOffset: 4096n, liveOffset: 6144n, firstBlock: 65536n });
	// Small blocks: the bitmap no longer fits before the first block.
	const g = geometry(1n << 40n, 4096); // 2^28 blocks -> 32 MiB bitmap
	t.equal(g.bitmapWords, 1n << 23n);
	t.equal(g.firstBlock, 4096n + 2n * (1n << 25n), 'header + bitmap + live bitmap');
	for (const bad of [0, 512, 3000, 4097, 4 * 1024 * 1024]) {
		t.throws(() => geometry(1n << 30n, bad), /power of two/, `block size ${bad} refused`);
	}
	t.throws(() => geometry(1n << 50n, 4096), /blocks/, 'too many blocks refused');
});

t.test('hostile headers are refused with one line and never written', async (t) => {
	const dir = await tmp(t);
	const base = join(dir, 'base.img');
	await writeFile(base, Buffer.alloc(1 << 20, 7));
	const good = join(dir, 'good.dscow');
	await plugin.create(good, { base, blockSize: 65536 });
	const pristine = await readFile(good);

	// Each case: a patch applied to the header; crc is recomputed unless the case says otherwise.
	const u32 = (off: number, v: number) => (b: Buffer) => b.writeUInt32LE(v >>> 0, off);
	const u64 = (off: number, v: bigint) => (b: Buffer) => b.writeBigUInt64LE(v, off);
	const cases: Array<{ name: string; patch: (b: Buffer) => void; keepCrc?: boolean; size?: number; msg: RegExp }> = [
		{ name: 'bad magic', patch: (b) => b.write('XXXXXXXX', 0, 'latin1'), msg: /magic/ },
		{ name: 'damaged header (crc)', patch: u32(200, 1), keepCrc: true, msg: /checksum/ },
		{ name: 'future version', patch: u32(8, 2), msg: /version 2/ },
		{ name: 'unknown flags', patch: u32(12, 0x80000001), msg: /unknown flags/ },
		{ name: 'block size 0', patch: u32(24, 0), msg: /block size 0/ },
		{ name: 'block size not a power of two', patch: u32(24, 65537), msg: /block size 65537/ },
		{ name: 'block size 16 MiB', patch: u32(24, 1 << 24), msg: /block size/ },
		{ name: 'huge virtual size', patch: u64(16, 1n << 62n), msg: /block count|virtual size/ },
		{ name: 'virtual size 0', patch: u64(16, 0n), msg: /virtual size 0/ },
		{
			name: 'huge size with matching counts (overflow)',
			patch: (b) => {
				b.writeBigUInt64LE(1n << 62n, 16);
				b.writeBigUInt64LE(1n << 46n, 40);
				b.writeBigUInt64LE(1n << 41n, 56);
			},
			msg: /more than|beyond/,
		},
		{ name: 'block count mismatch', patch: u64(40, 17n), msg: /block count 17/ },
		{ name: 'bitmap count mismatch', patch: u64(56, 2n), msg: /bitmap count 2/ },
		{ name: 'bitmap beyond the file end', patch: u64(48, 1n << 40n), msg: /beyond the end of the file/ },
		{ name: 'bitmap over the header', patch: u64(48, 0n), msg: /overlaps the header/ },
		{ name: 'first block overlapping the bitmap', patch: u64(32, 4096n), msg: /overlaps the bitmap/ },
		{ name: 'first block unaligned', patch: u64(32, 65537n), msg: /multiple of 4096/ },
		{ name: 'live bitmap over the bitmap', patch: u64(120, 4096n), msg: /live bitmap offset/ },
		{ name: 'live bitmap beyond the file end', patch: u64(120, 1n << 40n), msg: /live bitmap .*beyond/ },
		{ name: 'header size', patch: u32(28, 512), msg: /header size/ },
		{ name: 'base path length past the header', patch: u32(112, 5000), msg: /path length/ },
		{ name: 'relative base path', patch: (b) => { b.write('rel/x', 256); b.writeUInt32LE(5, 112); }, msg: /not absolute/ },
		{ name: 'base path pointing nowhere', patch: (b) => { const p = `${dir}/nope.img`; b.write(p, 256); b.writeUInt32LE(Buffer.byteLength(p), 112); }, msg: /not found/ },
		{ name: 'base outside allowed places', patch: (b) => { b.write('/etc/shadow', 256); b.writeUInt32LE(11, 112); }, msg: /outside/ },
		{ name: 'base size larger than disk', patch: u64(64, 1n << 40n), msg: /base size/ },
		{ name: 'truncated file', patch: () => {}, size: 100, msg: /shorter than/ },
	];
	for (const c of cases) {
		const p = join(dir, 'hostile.dscow');
		const buf = Buffer.from(pristine);
		c.patch(buf);
		if (!c.keepCrc) {
			buf.writeUInt32LE(0, 116);
			buf.writeUInt32LE(crc32(buf.subarray(0, HEADER_SIZE)), 116);
		}
		await writeFile(p, c.size !== undefined ? buf.subarray(0, c.size) : buf);
		const before = createHash('sha256').update(await readFile(p)).digest('hex');
		const mtime = (await stat(p)).mtimeMs;
		const err = await plugin.open(p).then(
			async (img) => {
				await img.close();
				return undefined;
			},
			(e: unknown) => e,
		);
		t.ok(isDmuError(err), `${c.name}: refused with a DmuError`);
		const msg = (err as Error | undefined)?.message ?? '';
		t.match(msg, c.msg, `${c.name}: says why (${msg})`);
		t.notMatch(msg, /\n/, `${c.name}: one line`);
		t.equal(createHash('sha256').update(await readFile(p)).digest('hex'), before, `${c.name}: file unchanged`);
		t.equal((await stat(p)).mtimeMs, mtime, `${c.name}: not written`);
	}

	// Stray bits in the last bitmap word: refused by open, found by check, fixed by check -r all.
	const blocks = 16; // 1 MiB / 64 KiB
	const p = join(dir, 'stray.dscow');
	const buf = Buffer.from(pristine);
	buf.writeUInt32LE(1 << blocks, 4096);
	await writeFile(p, buf);
	await t.rejects(plugin.open(p), /bits set past the last block/);
	t.match((await plugin.check(p)).corruptions, [/bits set past/]);
	const r = await plugin.check(p, { repair: 'all' });
	t.equal(r.repaired.length, 1, 'repaired');
	t.strictSame((await plugin.check(p)).corruptions, [], 'clean after repair');

	// A short (but valid) file is extended on a read-write open, not refused.
	const short = join(dir, 'short.dscow');
	await writeFile(short, pristine);
	await truncate(short, 65536);
	const img = await plugin.open(short);
	await img.close();
	t.equal((await stat(short)).size, 65536 + (1 << 20), 'extended to the last block');
});

t.test('Bitmap.clearUpTo counts clear blocks a word at a time', async (t) => {
	const { Bitmap } = await import('../../src/plugins/dscow/bitmap.js');
	const b = new Bitmap(1000n);
	t.equal(b.clearUpTo(0, 1000), 1000, 'all clear to the end');
	t.equal(b.clearUpTo(5, 40), 35, 'stops at end');
	b.set(100n);
	t.equal(b.clearUpTo(3, 1000), 97, 'stops at the set bit (crossing whole words)');
	t.equal(b.clearUpTo(100, 1000), 0, 'a set first block');
	t.equal(b.clearUpTo(101, 1000), 899, 'after it');
	b.set(999n);
	t.equal(b.clearUpTo(960, 1000), 39, 'last partial word');
	for (let from = 0; from < 200; from += 7) {
		let n = 0;
		while (from + n < 300 && !b.has(from + n)) n++;
		t.equal(b.clearUpTo(from, 300), n, `matches a bit-by-bit count from ${from}`);
	}
});
