/**
 * dscow with the kernel's copy on write (MapRequest.cow): which blocks get
 * a COW answer, that such an answer allocates nothing, and that the
 * kernel's allocation, once reported through allocated(), is recorded,
 * survives a daemon restart and reaches the committed bitmap only through
 * a commit that covers it.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { DmuError } from '../../src/errors.js';
import { plugin } from '../../src/plugins/dscow/index.js';
import { BlockEngine } from '../../src/plugins/engine.js';
import type { Image, MapRequest } from '../../src/plugins/types.js';

const BS = 65536;
/** Image sector of block N: the header's first block is at 64 KiB for these images. */
const imageSector = (block: bigint) => (65536n + block * BigInt(BS)) / 512n;
const baseSector = (block: bigint) => (block * BigInt(BS)) / 512n;

async function setup(t: { teardown(fn: () => unknown): void }, baseSize: number, size?: bigint) {
	const dir = await mkdtemp(join(tmpdir(), 'dscow-cow-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const image = join(dir, 'disk.dscow');
	const base = join(dir, 'base.img');
	await writeFile(base, randomBytes(baseSize));
	await plugin.create(image, { base, blockSize: BS, size });
	return image;
}

const ask = (img: Image, block: bigint, more: Partial<MapRequest> = {}) =>
	img.map({ block, write: false, wholeBlock: false, roFault: false, cow: true, ...more });
const write = (more: Partial<MapRequest> = {}) => ({ write: true, ...more });

t.test('unwritten base blocks: a COW answer for reads and writes, with a run', async (t) => {
	const image = await setup(t, 1 << 20); // 16 whole base blocks
	const img = await plugin.open(image);
	t.teardown(() => img.close());
	const cowOf = (block: bigint, run: number) => ({
		kind: 'map',
		dev: 1,
		sector: baseSector(block),
		writable: false,
		durable: true,
		cow: { dev: 0, sector: imageSector(block) },
		run,
	});
	t.strictSame(await ask(img, 2n), cowOf(2n, 1), 'read, no maxRun: one block');
	t.strictSame(await ask(img, 2n, { maxRun: 8 }), cowOf(2n, 8), 'read: a run up to maxRun');
	t.strictSame(await ask(img, 12n, { maxRun: 100 }), cowOf(12n, 4), 'the run stops at the end of the base');
	t.strictSame(await ask(img, 4n, write({ maxRun: 8 })), cowOf(4n, 8), 'partial write: the same answer, the kernel copies');
	t.strictSame(await ask(img, 4n, write({ wholeBlock: true })), cowOf(4n, 1), 'whole-block write: the same answer');
	t.strictSame(await ask(img, 4n, write({ roFault: true })), cowOf(4n, 1), 'a write on a read-only mapping: the same answer');
	await img.allocated!(7n, 0, imageSector(7n), 1);
	t.strictSame(await ask(img, 2n, { maxRun: 8 }), cowOf(2n, 5), 'the run stops before a block the kernel allocated');
	await img.map({ block: 10n, write: true, wholeBlock: true, roFault: false });
	t.strictSame(await ask(img, 8n, { maxRun: 8 }), cowOf(8n, 2), 'and before a block allocated by map()');
});

t.test('a COW answer allocates nothing', async (t) => {
	const image = await setup(t, 1 << 20);
	const img = await plugin.open(image);
	await ask(img, 3n, write({ maxRun: 4 }));
	await ask(img, 9n);
	t.match(await img.map({ block: 3n, write: false, wholeBlock: false, roFault: false }), { dev: 1, sector: baseSector(3n) }, 'block 3 still reads the base');
	// The daemon dies; a new one resumes: nothing in the live bitmap either.
	const again = await plugin.open(image, { resume: true });
	t.match(await again.map({ block: 3n, write: false, wholeBlock: false, roFault: false }), { dev: 1 }, 'not in the live bitmap');
	await again.close();
	t.equal((await plugin.info(image)).allocatedBlocks, 0n, 'nothing committed');
});

t.test('no COW answer where the kernel could not do the copy or the image is not ours to write', async (t) => {
	const image = await setup(t, 1 << 20, 2n << 20n); // 16 base blocks, 32 in the disk
	const img = await plugin.open(image);
	await img.map({ block: 5n, write: true, wholeBlock: true, roFault: false });
	const d5 = await ask(img, 5n, write());
	t.match(d5, { dev: 0, sector: imageSector(5n), writable: true }, 'allocated block: the image, writable');
	t.notOk('cow' in d5, 'no cow on an allocated block');
	const past = await ask(img, 20n);
	t.match(past, { kind: 'zero' }, 'past the base a read is zeros');
	const pastWrite = await ask(img, 21n, write());
	t.match(pastWrite, { dev: 0, writable: true }, 'past the base a write allocates in the daemon');
	t.notOk('cow' in pastWrite, 'no cow past the base');
	t.notOk('cow' in (await ask(img, 6n, { cow: false })), 'not offered: no cow');
	const notOffered = await ask(img, 11n, { cow: undefined, write: true });
	t.match(notOffered, { dev: 0, writable: true, copyFrom: { dev: 1, sector: baseSector(11n) } }, 'not offered, write: copy-first as before');
	t.notOk('cow' in notOffered, 'not offered, write: no cow');
	await img.close();

	const ro = await plugin.open(image, { readOnly: true });
	const r = await ask(ro, 8n);
	t.match(r, { dev: 1, writable: false }, 'read-only image: base');
	t.notOk('cow' in r, 'read-only image: no cow');
	await ro.close();
});

t.test('allocated() of a range: every block, one live write; a range past the end or of no blocks is refused whole', async (t) => {
	const image = await setup(t, 1 << 20);
	const img = await plugin.open(image);
	await img.allocated!(8n, 0, imageSector(8n), 4);
	for (const b of [8n, 9n, 10n, 11n]) t.match(await ask(img, b), { kind: 'map', dev: 0, sector: imageSector(b), durable: false }, `block ${b} allocated`);
	t.match(await ask(img, 12n), { dev: 1 }, 'the block after the range is not');
	const refusedWith = async (p: Promise<void>) => p.then(() => undefined, (e: unknown) => e);
	t.ok((await refusedWith(img.allocated!(13n, 0, imageSector(13n), 4))) instanceof DmuError, 'a range past the last block: refused');
	t.match(await ask(img, 13n), { dev: 1 }, 'and none of it recorded');
	t.ok((await refusedWith(img.allocated!(13n, 0, imageSector(13n), 0))) instanceof DmuError, 'a range of no blocks: refused');
	await img.allocated!(10n, 0, imageSector(10n), 3);
	t.match(await ask(img, 12n), { dev: 0, durable: false }, 'a range overlapping recorded blocks adds the new ones');
	// The daemon dies: the live bitmap carries the whole range.
	const again = await plugin.open(image, { resume: true });
	t.teardown(() => again.close());
	for (const b of [8n, 9n, 10n, 11n, 12n]) t.match(await ask(again, b), { dev: 0 }, `block ${b} in the live bitmap`);
});

t.test('scattered allocations reach the live bitmap, in one span or word by word, and only they', async (t) => {
	// 65,536 blocks: 2,048 bitmap words, more than one live write spans.
	const image = await setup(t, 1 << 20, 4n << 30n);
	const img = await plugin.open(image);
	const near = [3n, 100n, 3000n, 31n]; // words 0, 3 and 93: one span
	const far = [5n, 40000n, 65535n]; // words 0, 1250 and 2047: too far apart for one
	await Promise.all(near.map((b) => img.allocated!(b, 0, imageSector(b), 1)));
	await Promise.all(far.map((b) => img.allocated!(b, 0, imageSector(b), 1)));
	// The daemon dies before any commit: a resumed one has them all, and nothing else.
	const again = await plugin.open(image, { resume: true });
	t.teardown(() => again.close());
	for (const b of [...near, ...far]) t.match(await again.map({ block: b, write: false, wholeBlock: false, roFault: false }), { dev: 0 }, `block ${b} in the live bitmap`);
	for (const b of [4n, 32n, 101n, 2999n, 3001n, 39999n, 65534n]) {
		t.notMatch(await again.map({ block: b, write: false, wholeBlock: false, roFault: false }), { kind: 'map', dev: 0 }, `block ${b} is not`);
	}
});

t.test('the partial last base block (scratch) keeps copy-first', async (t) => {
	const image = await setup(t, 3 * BS + 3000);
	const e = await BlockEngine.open(plugin, image);
	t.teardown(() => e.close());
	t.match(await ask(e.image, 0n, { maxRun: 10 }), { dev: 1, cow: { dev: 0 }, run: 3 }, 'a COW run stops before the partial block');
	const r = await ask(e.image, 3n);
	t.match(r, { dev: 2, writable: false }, 'partial block read: scratch');
	t.notOk('cow' in r, 'no cow from the scratch device');
	const w = await ask(e.image, 3n, write());
	t.match(w, { dev: 0, writable: true, copyFrom: { dev: 2 } }, 'partial block write: copy-first from scratch');
	t.notOk('cow' in w, 'no cow on the write either');
});

t.test('allocated(): the bit and the live bitmap; a wrong place is refused; a repeat is harmless', async (t) => {
	const image = await setup(t, 1 << 20);
	const img = await plugin.open(image);
	await img.allocated!(4n, 0, imageSector(4n), 1);
	t.match(await ask(img, 4n), { kind: 'map', dev: 0, sector: imageSector(4n), writable: true, durable: false }, 'allocated, not durable');
	t.notOk('cow' in (await ask(img, 4n)), 'and no longer answered with cow');
	await img.allocated!(4n, 0, imageSector(4n), 1);
	t.match(await ask(img, 4n), { dev: 0, durable: false }, 'reported again: unchanged');

	const refused = async (p: Promise<void>, what: string) => {
		const e = await p.then(
			() => undefined,
			(e: unknown) => e,
		);
		t.ok(e instanceof DmuError, `${what}: refused with a DmuError`);
	};
	await refused(img.allocated!(5n, 0, imageSector(6n), 1), 'another block\'s sector');
	await refused(img.allocated!(5n, 1, baseSector(5n), 1), 'the base device');
	await refused(img.allocated!(16n, 0, imageSector(16n), 1), 'past the last block');
	t.match(await ask(img, 5n), { dev: 1, cow: { dev: 0 } }, 'a refused block stays unallocated');

	// The daemon dies before any commit: a resumed one still has block 4.
	const again = await plugin.open(image, { resume: true });
	t.match(await ask(again, 4n), { dev: 0, durable: false }, 'block 4 in the live bitmap');
	await again.commit();
	t.match(await ask(again, 4n), { dev: 0, durable: true }, 'durable after a commit');
	await again.allocated!(4n, 0, imageSector(4n), 1);
	t.match(await ask(again, 4n), { dev: 0, durable: true }, 'a report of a committed block changes nothing (not pending again)');
	await again.close();

	const ro = await plugin.open(image, { readOnly: true });
	await refused(ro.allocated!(9n, 0, imageSector(9n), 1), 'a read-only image');
	await ro.close();
});

t.test('a kernel allocation reaches the bitmap on disk only through a commit that covers it', async (t) => {
	const image = await setup(t, 1 << 20);
	const img = await plugin.open(image);
	await img.allocated!(2n, 0, imageSector(2n), 1);
	await img.allocated!(3n, 0, imageSector(3n), 1);
	await img.commit((b) => b === 2n);
	// Read the committed bitmap without a resume: the live bitmap does not count.
	const info = await plugin.info(image);
	t.equal(info.allocatedBlocks, 1n, 'only the covered block is committed');
	await img.commit((b) => b === 3n);
	t.equal((await plugin.info(image)).allocatedBlocks, 2n, 'the other one once covered');
	// Crash: no close. A plain reopen (not a resume) trusts only the committed bitmap.
	const after = await plugin.open(image);
	t.teardown(() => after.close());
	t.match(await after.map({ block: 2n, write: false, wholeBlock: false, roFault: false }), { dev: 0, sector: imageSector(2n), durable: true }, 'block 2 allocated after reopen');
	t.match(await after.map({ block: 3n, write: false, wholeBlock: false, roFault: false }), { dev: 0, durable: true }, 'block 3 too');
	t.match(await after.map({ block: 4n, write: false, wholeBlock: false, roFault: false }), { dev: 1 }, 'block 4 never allocated: base');
});

t.test('an uncovered kernel allocation is gone after a crash (plain reopen)', async (t) => {
	const image = await setup(t, 1 << 20);
	const img = await plugin.open(image);
	await img.allocated!(6n, 0, imageSector(6n), 1);
	await img.commit(() => false);
	const after = await plugin.open(image);
	t.teardown(() => after.close());
	t.match(await after.map({ block: 6n, write: false, wholeBlock: false, roFault: false }), { dev: 1 }, 'block 6 reads the base again');
	t.match((await plugin.check(image)).corruptions, [], 'no corruption');
});
