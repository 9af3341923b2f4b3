/**
 * The userspace block engine against a tiny CoW plugin defined here: reads
 * come from a base file read-only until a write allocates the block in the
 * overlay file with copy-first, so every engine rule is exercised on real
 * files.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { BlockEngine } from '../../src/plugins/engine.js';
import type { Image, MapDecision, MapRequest, Plugin } from '../../src/plugins/types.js';

const BS = 4096;
const BLOCKS = 8;

function cowPlugin(base: string, log: MapRequest[], opts: { temporaryBlock?: bigint; zeroBlock?: bigint } = {}): Plugin {
	return {
		name: 'testcow',
		probe: () => false,
		create: async () => {},
		check: async () => ({ corruptions: [], leaks: [], repaired: [] }),
		info: async () => {
			throw new Error('unused');
		},
		open: async (path): Promise<Image> => {
			const allocated = new Set<bigint>();
			return {
				format: 'testcow',
				virtualSize: BigInt(BS * BLOCKS),
				blockSize: BS,
				devices: [
					{ path, writable: true },
					{ path: base, writable: false },
				],
				capabilities: { write: true, flush: false, scratch: false },
				map: async (req): Promise<MapDecision> => {
					log.push(req);
					const sector = (req.block * BigInt(BS)) / 512n;
					if (req.block === opts.zeroBlock && !req.write) return { kind: 'zero' };
					if (req.write && !allocated.has(req.block)) {
						allocated.add(req.block);
						return { kind: 'map', dev: 0, sector, writable: true, copyFrom: req.wholeBlock ? undefined : { dev: 1, sector } };
					}
					if (allocated.has(req.block)) return { kind: 'map', dev: 0, sector, writable: true };
					return { kind: 'map', dev: 1, sector, writable: false, temporary: req.block === opts.temporaryBlock };
				},
				commit: async () => {},
				close: async () => {},
			};
		},
	};
}

function setup(t: { teardown(fn: () => void): void }) {
	const dir = mkdtempSync(join(tmpdir(), 'dmu-engine-'));
	t.teardown(() => rmSync(dir, { recursive: true, force: true }));
	const base = join(dir, 'base');
	const overlay = join(dir, 'overlay');
	const baseBytes = Buffer.alloc(BS * BLOCKS);
	for (let i = 0; i < baseBytes.length; i++) baseBytes[i] = (i * 7 + 3) & 0xff;
	writeFileSync(base, baseBytes);
	writeFileSync(overlay, Buffer.alloc(BS * BLOCKS));
	return { base, overlay, baseBytes };
}

t.test('reads come from the base and are remembered', async (t) => {
	const { base, overlay, baseBytes } = setup(t);
	const log: MapRequest[] = [];
	const e = await BlockEngine.open(cowPlugin(base, log), overlay);
	t.same(await e.read(0, BS * BLOCKS), baseBytes);
	t.same(await e.read(100, 50), baseBytes.subarray(100, 150));
	t.equal(log.length, BLOCKS, 'one request per block, none for the second read');
	await e.close();
});

t.test('a partial write copies the base block first; the base is untouched', async (t) => {
	const { base, overlay, baseBytes } = setup(t);
	const log: MapRequest[] = [];
	const e = await BlockEngine.open(cowPlugin(base, log), overlay);
	await e.read(BS, 10); // read-only mapping of block 1 remembered
	const patch = Buffer.alloc(100, 0xee);
	await e.write(BS + 1000, patch);
	t.equal(e.stats.faults, 1, 'the write faulted on the read-only mapping');
	t.equal(e.stats.copies, 1);
	t.ok(log.at(-1)?.roFault && log.at(-1)?.write && !log.at(-1)?.wholeBlock);
	const expect = Buffer.from(baseBytes.subarray(BS, 2 * BS));
	patch.copy(expect, 1000);
	t.same(await e.read(BS, BS), expect, 'bytes around the write are the base bytes');
	t.same(readFileSync(base), baseBytes, 'base unchanged');
	await e.close();
});

t.test('a whole-block write skips the copy', async (t) => {
	const { base, overlay } = setup(t);
	const e = await BlockEngine.open(cowPlugin(base, []), overlay);
	await e.write(2 * BS, Buffer.alloc(BS, 1));
	t.equal(e.stats.copies, 0);
	t.same(await e.read(2 * BS, BS), Buffer.alloc(BS, 1));
	await e.close();
});

t.test('temporary mappings are asked again; zero mappings read zeros', async (t) => {
	const { base, overlay } = setup(t);
	const log: MapRequest[] = [];
	const e = await BlockEngine.open(cowPlugin(base, log, { temporaryBlock: 3n, zeroBlock: 4n }), overlay);
	await e.read(3 * BS, 1);
	await e.read(3 * BS, 1);
	t.equal(log.filter((r) => r.block === 3n).length, 2);
	t.same(await e.read(4 * BS, BS), Buffer.alloc(BS));
	await e.close();
});

t.test('I/O outside the disk is refused', async (t) => {
	const { base, overlay } = setup(t);
	const e = await BlockEngine.open(cowPlugin(base, []), overlay);
	await t.rejects(e.read(BS * BLOCKS - 1, 2), { code: 'DMU_ERR_RANGE' });
	await t.rejects(e.write(-1, Buffer.alloc(1)), { code: 'DMU_ERR_RANGE' });
	await e.close();
});
