/**
 * Fuzz: mutated headers, L1/L2 tables and refcount structures of small
 * qemu-img images (seeded, deterministic). Each mutant either opens and
 * answers every map request with a decision that stays inside its devices,
 * or is refused with a DmuError: never another exception, never a hang.
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { DmuError } from '../../src/errors.js';
import { plugin } from '../../src/plugins/qcow2/index.js';
import { OFFSET_MASK, parseHeader } from '../../src/plugins/qcow2/layout.js';
import type { Image, MapDecision, ScratchArea } from '../../src/plugins/types.js';
import { qemuCreate, qemuImg, qemuIo, tempDir } from '../support/qemu-img.js';
import { prng } from '../support/prng.js';

const ITERATIONS = Number(process.env.DMU_QCOW2_FUZZ ?? 10_000);
const { dir, cleanup } = await tempDir('dmu-qcow2-fuzz-', true);
t.teardown(cleanup);


interface Seed {
	name: string;
	bytes: Buffer;
	/** [offset, length] of metadata worth mutating. */
	regions: [number, number][];
}

async function seed(name: string, make: (p: string) => Promise<void>): Promise<Seed> {
	const p = join(dir, `${name}.qcow2`);
	await make(p);
	const bytes = await readFile(p);
	const h = parseHeader(p, bytes.subarray(0, Math.min(bytes.length, 65536)), bytes.length, true);
	const cs = h.clusterSize;
	const regions: [number, number][] = [[0, Math.min(cs, 512)]];
	if (h.l1Size) regions.push([h.l1Offset, h.l1Size * 8]);
	regions.push([h.refcountTableOffset, Math.min(h.refcountTableClusters * cs, 512)]);
	const rb = Number(bytes.readBigUInt64BE(h.refcountTableOffset) & OFFSET_MASK);
	if (rb) regions.push([rb, cs]);
	for (let i = 0; i < h.l1Size; i++) {
		const l2 = Number(bytes.readBigUInt64BE(h.l1Offset + i * 8) & OFFSET_MASK);
		if (l2) regions.push([l2, cs]);
	}
	return { name, bytes, regions };
}

const INTERESTING = [0n, 1n, 0x200n, 0x1000n, 0x7fffffffn, 0xffffffffn, 1n << 55n, (1n << 63n) - 1n, 0xffffffffffffffffn, 1n << 62n, (1n << 63n) | 0x200n];

function mutate(s: Seed, rnd: () => number): Buffer {
	const b = Buffer.from(s.bytes);
	const n = 1 + Math.floor(rnd() * 4);
	for (let k = 0; k < n; k++) {
		const [start, len] = s.regions[Math.floor(rnd() * s.regions.length)] ?? [0, 72];
		const kind = rnd();
		if (kind < 0.4) {
			const at = start + Math.floor(rnd() * len);
			b[at] = Math.floor(rnd() * 256);
		} else if (kind < 0.7) {
			const at = start + Math.floor(rnd() * len);
			b[at] = (b[at] ?? 0) ^ (1 << Math.floor(rnd() * 8));
		} else {
			// An aligned 64-bit field set to a boundary value (or the file size, or near it).
			const at = start + Math.floor((rnd() * len) / 8) * 8;
			if (at + 8 > b.length) continue;
			const pick = Math.floor(rnd() * (INTERESTING.length + 3));
			const size = BigInt(b.length);
			const v = INTERESTING[pick] ?? [size, size - 512n, (size & ~511n) | (1n << 63n)][pick - INTERESTING.length] ?? 0n;
			if (rnd() < 0.5) b.writeBigUInt64BE(v, at);
			else b.writeUInt32BE(Number(v & 0xffffffffn), at + (rnd() < 0.5 ? 0 : 4));
		}
	}
	return b;
}

/** A decision must stay inside the device it names (scratch: the stand-in's extent). */
async function checkDecision(img: Image, d: MapDecision, scratchEnd: bigint, sizes: number[]): Promise<string | undefined> {
	if (d.kind !== 'map') return undefined;
	const bs = BigInt(img.blockSize);
	const inside = (dev: number, sector: bigint): boolean => {
		if (dev === img.devices.length) return sector >= 0n && sector * 512n + bs <= scratchEnd;
		const size = sizes[dev];
		return size !== undefined && sector >= 0n && sector * 512n + bs <= BigInt(size);
	};
	if (!inside(d.dev, d.sector)) return `mapping ${d.dev}:${d.sector} outside its device`;
	if (d.copyFrom && !inside(d.copyFrom.dev, d.copyFrom.sector)) return `copy source ${d.copyFrom.dev}:${d.copyFrom.sector} outside its device`;
	if (d.writable && d.dev !== 0) return 'writable mapping to a read-only device';
	return undefined;
}

async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
	let timer: NodeJS.Timeout | undefined;
	const limit = new Promise<never>((_, rej) => {
		timer = setTimeout(() => rej(new Error(`hang: no answer within ${ms} ms`)), ms);
	});
	try {
		return await Promise.race([p, limit]);
	} finally {
		clearTimeout(timer);
	}
}

const seeds = [
	await seed('v3-512', async (p) => {
		await qemuCreate(p, 'qcow2', { size: 128 * 1024, options: { cluster_size: 512 } });
		await qemuIo(p, ['write -P 0x11 0 8k', 'write -z 16k 4k', 'write -P 0x12 100k 3k']);
	}),
	await seed('v2-4k-compressed', async (p) => {
		const src = `${p}.src`;
		await qemuCreate(src, 'qcow2', { size: 256 * 1024 });
		await qemuIo(src, ['write -P 0x21 0 64k', 'write -P 0x22 200k 20k']);
		await qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'compat=0.10,cluster_size=4096', src, p);
	}),
	await seed('v3-16k-extl2-backing', async (p) => {
		const base = join(dir, 'fuzz-base.raw');
		await qemuCreate(base, 'raw', { size: 512 * 1024 });
		await qemuIo(base, ['write -P 0x31 0 512k'], 'raw');
		await qemuCreate(p, 'qcow2', { size: 512 * 1024, backing: 'fuzz-base.raw', backingFormat: 'raw', options: { cluster_size: 16384, extended_l2: 'on' } });
		await qemuIo(p, ['write -P 0x32 1k 2k', 'write -z 40k 8k', 'write -P 0x33 64k 16k']);
	}),
];

type Stats = { opened: number; refused: number; commitRefusals: number; maps: number; errorsAnswered: number; mapRefusals: number; slowestMs: number; slowest: number };

/**
 * One mutant, from its own seed (so any failing iteration replays alone):
 * open, map a sample of blocks (reads and writes), close.
 */
async function oneMutant(i: number, path: string, stats: Stats, failures: string[]): Promise<void> {
	const rnd = prng(0xd3c0ffee ^ Math.imul(i, 0x9e3779b1));
	const s = seeds[i % seeds.length] as Seed;
	const t0 = Date.now();
	const bytes = mutate(s, rnd);
	await writeFile(path, bytes);
	const readOnly = rnd() < 0.3;
	let scratchEnd = 0n;
	let img: Image | undefined;
	try {
		const scratch: ScratchArea = {
			get dev() {
				return img ? img.devices.length : -1;
			},
			async put(data) {
				const at = scratchEnd / 512n;
				scratchEnd += BigInt(Math.ceil(data.length / 512) * 512);
				return at;
			},
		};
		img = await plugin.open(path, { readOnly, scratch });
		stats.opened++;
		const opened = img;
		const bs = BigInt(img.blockSize);
		const blocks = (img.virtualSize + bs - 1n) / bs;
		// A sample of blocks (all of them on small images) keeps 10,000 mutants quick.
		const limit = blocks < 24n ? blocks : 24n;
		const sizeOf = async () => Promise.all(opened.devices.map(async (dv) => (await stat(dv.path)).size));
		let sizes = await sizeOf();
		for (let k = 0n; k < limit; k++) {
			const b = limit === blocks ? k : BigInt(Math.floor(rnd() * Number(blocks)));
			const write = !readOnly && rnd() < 0.15;
			try {
				const d = await img.map({ block: b, write, wholeBlock: write && rnd() < 0.5, roFault: false });
				stats.maps++;
				if (d.kind === 'error') stats.errorsAnswered++;
				if (write) sizes = await sizeOf(); // only writes grow the file
				const bad = await checkDecision(img, d, scratchEnd, sizes);
				if (bad) failures.push(`iteration ${i} (${s.name}) block ${b}: ${bad}`);
			} catch (e) {
				if (!(e instanceof DmuError)) throw e;
				stats.mapRefusals++;
			}
		}
		await img.close();
	} catch (e) {
		if (e instanceof DmuError) {
			// Refused at open, or (an image found corrupt while mapping) at commit.
			if (img) stats.commitRefusals++;
			else stats.refused++;
			if (e.message.includes('\n')) failures.push(`iteration ${i}: multi-line error: ${e.message}`);
			await img?.close().catch(() => undefined);
		} else {
			failures.push(`iteration ${i} (${s.name}): ${(e as Error).stack ?? e}`);
		}
	}
	if (Date.now() - t0 > stats.slowestMs) {
		stats.slowestMs = Date.now() - t0;
		stats.slowest = i;
	}
	// Whatever happened, the file must not have grown wildly.
	const grown = (await stat(path)).size - bytes.length;
	if (grown > 64 * 1024 * 1024) failures.push(`iteration ${i}: file grew by ${grown} bytes`);
}

t.test(`${ITERATIONS} mutated images open consistently or are refused`, async (tt) => {
	const stats: Stats = { opened: 0, refused: 0, commitRefusals: 0, maps: 0, errorsAnswered: 0, mapRefusals: 0, slowestMs: 0, slowest: -1 };
	const failures: string[] = [];
	const started = Date.now();
	// A few lanes overlap file I/O; each iteration is still deterministic.
	const LANES = 4;
	let next = 0;
	await Promise.all(
		Array.from({ length: LANES }, async (_, lane) => {
			const path = join(dir, `mutant-${lane}.qcow2`);
			while (next < ITERATIONS && failures.length < 5) {
				// One watchdog per mutant: a hang fails the test instead of stalling it.
				const i = next++;
				await withTimeout(oneMutant(i, path, stats, failures), 20_000).catch((e: Error) => failures.push(`iteration ${i}: ${e.message}`));
			}
		}),
	);
	tt.same(failures, [], 'no crash, no hang, no mapping outside a device');
	tt.ok(stats.opened > ITERATIONS / 10 && stats.refused > ITERATIONS / 10, `both outcomes exercised: ${JSON.stringify(stats)}`);
	tt.comment(`fuzz: ${ITERATIONS} mutants in ${Date.now() - started} ms: ${JSON.stringify(stats)}`);
});
