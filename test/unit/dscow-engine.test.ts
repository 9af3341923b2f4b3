/**
 * dscow through BlockEngine (the kernel's mapping rules, in userspace)
 * against real files: what reads back is the base plus our writes, the base
 * never changes, whole-block writes skip the copy, a crash between a write
 * and its commit leaves a consistent image, check finds what is wrong.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { plugin } from '../../src/plugins/dscow/index.js';
import { BlockEngine } from '../../src/plugins/engine.js';

const BS = 65536;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function setup(t: { teardown(fn: () => unknown): void }, baseSize: number | null, blockSize = BS) {
	const dir = await mkdtemp(join(tmpdir(), 'dscow-engine-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const image = join(dir, 'disk.dscow');
	let base: string | undefined;
	let baseData = Buffer.alloc(0);
	if (baseSize !== null) {
		base = join(dir, 'base.img');
		baseData = randomBytes(baseSize);
		await writeFile(base, baseData);
		await plugin.create(image, { base, blockSize });
	} else {
		await plugin.create(image, { size: 4n << 20n, blockSize });
	}
	return { dir, image, base, baseData };
}

t.test('reads are the base plus the writes; the base never changes', async (t) => {
	const { image, base, baseData } = await setup(t, 4 << 20);
	const baseHash = sha(await readFile(base!));
	const model = Buffer.from(baseData);
	let e = await BlockEngine.open(plugin, image);
	t.equal(e.image.virtualSize, BigInt(4 << 20));
	t.same(await e.read(0, 4 << 20), model, 'fresh image reads as the base');

	// Partial writes inside never-written blocks keep the base bytes around them.
	const writes: Array<[number, Buffer]> = [
		[100, randomBytes(10)],
		[BS - 5, randomBytes(10)], // straddles blocks 0 and 1
		[3 * BS + 4096, randomBytes(512)],
		[10 * BS, randomBytes(BS)], // whole block: no copy
		[(4 << 20) - 7, randomBytes(7)], // the very end
	];
	for (const [off, data] of writes) {
		await e.write(off, data);
		data.copy(model, off);
	}
	t.same(await e.read(0, 4 << 20), model, 'reads back base + writes');
	t.equal(e.stats.copies, 4, 'copy-first for blocks 0, 1, 3 and the last; not for the whole-block write');
	await e.flush();
	await e.close();
	t.equal(sha(await readFile(base!)), baseHash, 'base untouched');

	e = await BlockEngine.open(plugin, image);
	t.same(await e.read(0, 4 << 20), model, 'same bytes after reopen');
	const info = await plugin.info(image);
	t.equal(info.allocatedBlocks, 5n, 'five blocks allocated');
	// Allocated blocks map to the image and are durable; writes need no new request.
	const before = e.stats.requests;
	await e.write(110, Buffer.from('again'));
	Buffer.from('again').copy(model, 110);
	await e.close();
	t.ok(e.stats.requests - before <= 1, 'allocated block: one request at most');
	t.same((await plugin.check(image)), { corruptions: [], leaks: [], repaired: [] }, 'check clean');
	t.equal((await plugin.info(image)).dirty, false, 'closed cleanly');
});

t.test('map decisions follow the rules', async (t) => {
	const { image } = await setup(t, 1 << 20);
	const img = await plugin.open(image);
	t.teardown(() => img.close());
	t.strictSame(img.devices.map((d) => d.writable), [true, false], 'image rw, base ro');
	t.equal(img.capabilities.scratch, false, 'aligned base needs no scratch');
	const r = await img.map({ block: 2n, write: false, wholeBlock: false, roFault: false });
	t.strictSame(r, { kind: 'map', dev: 1, sector: (2n * 65536n) / 512n, writable: false, durable: true, run: 1 }, 'read: base, read-only');
	const w = await img.map({ block: 2n, write: true, wholeBlock: false, roFault: true });
	t.match(w, { kind: 'map', dev: 0, sector: (65536n + 2n * 65536n) / 512n, writable: true, durable: false, copyFrom: { dev: 1, sector: 256n } });
	const ww = await img.map({ block: 3n, write: true, wholeBlock: true, roFault: false });
	t.notOk('copyFrom' in ww && (ww as { copyFrom?: unknown }).copyFrom, 'whole block: no copy');
	t.match(await img.map({ block: 2n, write: false, wholeBlock: false, roFault: false }), { dev: 0, durable: false }, 'not durable before commit');
	await img.commit();
	t.match(await img.map({ block: 2n, write: false, wholeBlock: false, roFault: false }), { dev: 0, writable: true, durable: true }, 'durable after commit');
	t.match(await img.map({ block: 99n, write: false, wholeBlock: false, roFault: false }), { kind: 'error' }, 'out of range: error');
	// A failed kernel copy-first undoes a fresh allocation (not a committed one).
	await img.map({ block: 5n, write: true, wholeBlock: false, roFault: false });
	await img.copyFailed!(5n);
	t.match(await img.map({ block: 5n, write: false, wholeBlock: false, roFault: false }), { dev: 1 }, 'block 5 back on the base');
	await img.copyFailed!(2n);
	t.match(await img.map({ block: 2n, write: false, wholeBlock: false, roFault: false }), { dev: 0 }, 'committed block 2 kept');
});

t.test('runs: one answer for the neighbours that have the same one', async (t) => {
	const { image } = await setup(t, 1 << 20); // 16 blocks of base
	const img = await plugin.open(image);
	t.teardown(() => img.close());
	const read = (block: bigint, maxRun?: number) => img.map({ block, write: false, wholeBlock: false, roFault: false, maxRun });
	t.match(await read(2n), { dev: 1, run: 1 }, 'no maxRun: one block');
	t.match(await read(2n, 8), { dev: 1, sector: 256n, run: 8 }, 'unwritten neighbours: a base run up to maxRun');
	t.match(await read(12n, 100), { dev: 1, run: 4 }, 'a base run stops at the end of the base');
	await img.map({ block: 5n, write: true, wholeBlock: true, roFault: false });
	t.match(await read(2n, 8), { dev: 1, run: 3 }, 'a base run stops before an allocated block');
	t.match(await read(5n, 8), { dev: 0, durable: false, run: 1 }, 'an uncommitted block: no run');
	await img.commit();
	await img.map({ block: 6n, write: true, wholeBlock: true, roFault: false });
	await img.map({ block: 7n, write: true, wholeBlock: true, roFault: false });
	await img.commit();
	await img.map({ block: 8n, write: true, wholeBlock: true, roFault: false });
	t.match(await read(5n, 8), { dev: 0, sector: (65536n + 5n * 65536n) / 512n, writable: true, durable: true, run: 3 }, 'committed neighbours: one run in the file, not past an uncommitted one');
});

t.test('runs: zeros without a base; the partial last base block stands alone', async (t) => {
	const { image } = await setup(t, null);
	const img = await plugin.open(image);
	t.teardown(() => img.close());
	const read = (block: bigint, maxRun?: number) => img.map({ block, write: false, wholeBlock: false, roFault: false, maxRun });
	t.match(await read(1n, 1000), { kind: 'zero', run: 63 }, 'a zero run to the end of the disk');
	await img.map({ block: 5n, write: true, wholeBlock: true, roFault: false });
	t.match(await read(1n, 1000), { kind: 'zero', run: 4 }, 'a zero run stops before an allocated block');

	const p = await setup(t, 3 * BS + 3000);
	const e = await BlockEngine.open(plugin, p.image);
	t.teardown(() => e.close());
	const pr = (block: bigint) => e.image.map({ block, write: false, wholeBlock: false, roFault: false, maxRun: 10 });
	t.match(await pr(0n), { dev: 1, run: 3 }, 'a base run stops before the partial block');
	t.match(await pr(3n), { dev: 2, run: 1 }, 'the partial block (scratch) alone');
});

t.test('no base: unallocated reads are zeros', async (t) => {
	const { image } = await setup(t, null);
	const e = await BlockEngine.open(plugin, image);
	t.equal(e.image.devices.length, 1);
	t.same(await e.read(0, 3 * BS), Buffer.alloc(3 * BS), 'zeros');
	t.match(await e.image.map({ block: 1n, write: false, wholeBlock: false, roFault: false }), { kind: 'zero' });
	await e.write(BS + 10, Buffer.from('hello'));
	const expect = Buffer.alloc(BS);
	Buffer.from('hello').copy(expect, 10);
	t.same(await e.read(BS, BS), expect);
	t.equal(e.stats.copies, 0, 'nothing to copy from');
	await e.close();
});

t.test('base not a multiple of the block size: last block via scratch, never past the end', async (t) => {
	const size = 3 * BS + 1000 * 3; // 3000 bytes into block 3 (not even sector-aligned)
	const { image, baseData } = await setup(t, size);
	const e = await BlockEngine.open(plugin, image);
	t.equal(e.image.virtualSize, BigInt(Math.ceil(size / 512) * 512), 'virtual size rounded up to a sector');
	t.equal(e.image.capabilities.scratch, true, 'asks for scratch');
	const d = await e.image.map({ block: 3n, write: false, wholeBlock: false, roFault: false });
	t.match(d, { kind: 'map', dev: 2, writable: false }, 'last block read from the scratch device');
	const model = Buffer.alloc(Number(e.image.virtualSize));
	baseData.copy(model);
	t.same(await e.read(0, model.length), model, 'reads the base, zero after its end');
	await e.write(3 * BS + 10, Buffer.from('tail'));
	Buffer.from('tail').copy(model, 3 * BS + 10);
	const w = await e.image.map({ block: 3n, write: true, wholeBlock: false, roFault: false });
	t.equal((w as { dev: number }).dev, 0, 'writes go to the image');
	t.same(await e.read(0, model.length), model, 'base bytes kept around the write');
	await e.close();
	const e2 = await BlockEngine.open(plugin, image);
	t.same(await e2.read(0, model.length), model, 'after reopen');
	await e2.close();
});

t.test('a crash between write and commit leaves a consistent image', async (t) => {
	const { image, baseData } = await setup(t, 1 << 20);
	const committed = randomBytes(100);
	const lost = randomBytes(100);
	const e = await BlockEngine.open(plugin, image);
	await e.write(0, committed);
	await e.flush(); // block 0 committed
	await e.write(5 * BS + 7, lost); // block 5 written, never committed
	// Crash: no close, no commit. The engine's handles are simply abandoned.

	t.equal((await plugin.info(image)).dirty, true, 'image says it was not closed cleanly');
	const chk = await plugin.check(image);
	t.strictSame(chk.corruptions, [], 'no corruption');
	t.match(chk.leaks, [/block 5/], 'orphaned data of block 5 is a leak');

	const e2 = await BlockEngine.open(plugin, image);
	const model = Buffer.from(baseData);
	committed.copy(model, 0);
	t.same(await e2.read(0, 1 << 20), model, 'committed write kept, uncommitted one gone: block 5 is the base');
	await e2.close();
	const fix = await plugin.check(image, { repair: 'leaks' });
	t.match(fix.repaired, [/block 5/], 'leak repaired');
	t.strictSame(await plugin.check(image), { corruptions: [], leaks: [], repaired: [] }, 'clean after repair');
});

t.test('a daemon restart (resume) keeps allocations the dead daemon never committed', async (t) => {
	const { image, baseData } = await setup(t, 1 << 20);
	const data = randomBytes(300);
	const e = await BlockEngine.open(plugin, image);
	await e.write(3 * BS + 50, data); // allocated, never committed; the daemon dies
	const model = Buffer.from(baseData);
	data.copy(model, 3 * BS + 50);
	const e2 = await BlockEngine.open(plugin, image, { resume: true });
	t.match(await e2.image.map({ block: 3n, write: false, wholeBlock: false, roFault: false }), { dev: 0, durable: false }, 'block 3 still allocated, not yet durable');
	t.same(await e2.read(0, 1 << 20), model, 'the write is still there');
	await e2.close();
	t.equal((await plugin.info(image)).allocatedBlocks, 1n, 'committed on close');
	const e3 = await BlockEngine.open(plugin, image);
	t.same(await e3.read(0, 1 << 20), model, 'and after a normal reopen');
	await e3.close();
});

t.test('after a crash, a hole with orphaned data reads zeros once allocated (no base)', async (t) => {
	const { image } = await setup(t, null);
	const e = await BlockEngine.open(plugin, image);
	await e.write(2 * BS, Buffer.alloc(BS, 0xaa)); // whole block, never committed
	// crash
	const e2 = await BlockEngine.open(plugin, image);
	await e2.write(2 * BS + 100, Buffer.from('x'));
	const expect = Buffer.alloc(BS);
	expect[100] = 'x'.charCodeAt(0);
	t.same(await e2.read(2 * BS, BS), expect, 'no orphaned 0xaa bytes show through');
	await e2.close();
});

t.test('base checks: missing, changed, outside the allowed places', async (t) => {
	const { dir, image, base } = await setup(t, 1 << 20);
	// Changed contents (same size and mtime).
	const st = await stat(base!);
	const fh = await open(base!, 'r+');
	await fh.write(Buffer.from('changed'), 0, 7, 0);
	await fh.close();
	await utimes(base!, st.atime, st.mtime);
	const before = sha(await readFile(image));
	await t.rejects(plugin.open(image), /base .* has changed: its contents differ/);
	t.equal(sha(await readFile(image)), before, 'image not written');
	t.match((await plugin.check(image)).corruptions, [/has changed/], 'check reports it');
	// Only the mtime differs.
	await fh.close().catch(() => undefined);
	const fh2 = await open(base!, 'r+');
	await fh2.write(Buffer.from('\0\0\0\0\0\0\0'), 0, 7, 0);
	await fh2.close();
	await t.rejects(plugin.open(image), /has changed/, 'first 7 bytes restored but mtime differs');
	await utimes(base!, st.atime, st.mtime);
	// the base was random; restoring zeros does not restore it: recreate instead
	await rm(image);
	await plugin.create(image, { base: base! });
	const ok = await plugin.open(image);
	await ok.close();
	t.pass('fresh image over the current base opens');
	await rm(base!);
	await t.rejects(plugin.open(image), /base .*: not found/, 'missing base');
	// A base given explicitly overrides the header (and is still checked).
	await t.rejects(plugin.open(image, { base: join(dir, 'other.img') }), /not found/);
});

t.test('block sizes 4 KiB and 2 MiB', async (t) => {
	for (const bs of [4096, 2 * 1024 * 1024]) {
		const { image, baseData } = await setup(t, 4 << 20, bs);
		const e = await BlockEngine.open(plugin, image);
		t.equal(e.image.blockSize, bs);
		const model = Buffer.from(baseData);
		const d = randomBytes(5000);
		await e.write(bs - 100, d);
		d.copy(model, bs - 100);
		t.same(await e.read(0, model.length), model, `${bs}: base + write`);
		await e.close();
	}
});

t.test('a batch of first touches at once: every bit reaches the live bitmap and survives a daemon restart', async (t) => {
	const { image } = await setup(t, 8 << 20); // 128 blocks: four live-bitmap words
	const img = await plugin.open(image);
	const blocks = Array.from({ length: 100 }, (_, i) => BigInt((i * 37) % 128));
	const unique = [...new Set(blocks)];
	// As cowd answers a batch when the image allows overlapping map() calls.
	t.equal(img.capabilities.concurrentMap, true, 'dscow allows overlapping map() calls');
	const ds = await Promise.all(unique.map((block) => img.map({ block, write: true, wholeBlock: true, roFault: false })));
	t.ok(ds.every((d) => d.kind === 'map' && d.dev === 0 && !d.durable), 'every block allocated, none durable yet');
	// The daemon dies here without a commit; a new one resumes.
	const again = await plugin.open(image, { resume: true });
	const seen = await Promise.all(unique.map((block) => again.map({ block, write: false, wholeBlock: false, roFault: false })));
	t.ok(
		seen.every((d) => d.kind === 'map' && d.dev === 0 && d.durable === false),
		'all allocations found in the live bitmap',
	);
	const untouched = Array.from({ length: 128 }, (_, i) => BigInt(i)).find((b) => !unique.includes(b))!;
	const fresh = await again.map({ block: untouched, write: false, wholeBlock: false, roFault: false });
	t.match(fresh, { dev: 1 }, 'a block never touched still reads from the base');
	await again.close();
	t.equal((await plugin.info(image)).allocatedBlocks, BigInt(unique.length), 'committed on close');
});
