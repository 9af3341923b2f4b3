/**
 * Helpers for the format interop tests (raw, vhd, vmdk, qcow, convert):
 * qemu-img/qemu-io through execa, temp dirs, a seeded PRNG, and reading a
 * whole disk through a plugin with BlockEngine.
 */
import { mkdtemp, open as openFile, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { BlockEngine } from '../../src/plugins/engine.js';
import { loadPlugin } from '../../src/plugins/registry.js';
import { isDmuError } from '../../src/errors.js';
import type { Image, MapDecision, OpenOptions, Plugin, ScratchArea } from '../../src/plugins/types.js';
import { prng } from '../support/prng.js';

// Tests import the PRNG from here with the rest of their helpers.
export { prng };

export const MiB = 1024 * 1024;

export async function qemuImg(...args: string[]): Promise<string> {
	const r = await execa('qemu-img', args, { timeout: 120_000 });
	return r.stdout;
}

/** qemu-img with its exit status (check/compare use it to answer). */
export async function qemuImgStatus(...args: string[]): Promise<{ code: number; out: string }> {
	const r = await execa('qemu-img', args, { reject: false, timeout: 120_000 });
	return { code: r.exitCode ?? -1, out: `${r.stdout}\n${r.stderr}` };
}

/** Run qemu-io commands (e.g. "write -P 0xab 0 64k") on an image. */
export async function qemuIo(fmt: string, path: string, cmds: string[]): Promise<void> {
	const args = ['-f', fmt, '-t', 'unsafe'];
	for (const c of cmds) args.push('-c', c);
	args.push(path);
	const r = await execa('qemu-io', args, { timeout: 120_000 });
	if (/error|failed/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io: ${r.stdout}${r.stderr}`);
}

/** The disk's bytes as qemu sees them. */
export async function qemuRaw(fmt: string, path: string, dir: string): Promise<Buffer> {
	const out = join(dir, `ref-${Math.random().toString(36).slice(2)}.raw`);
	await qemuImg('convert', '-t', 'unsafe', '-f', fmt, '-O', 'raw', path, out);
	const b = await readFile(out);
	await rm(out);
	return b;
}

/** The disk's bytes as dmu sees them (read through the plugin's decisions). */
export async function dmuRaw(fmt: string, path: string, opts: OpenOptions = {}): Promise<Buffer> {
	const eng = await BlockEngine.open(await loadPlugin(fmt), path, { readOnly: true, ...opts });
	try {
		const size = Number(eng.image.virtualSize);
		const out = Buffer.alloc(size);
		const chunk = 4 * MiB;
		for (let off = 0; off < size; off += chunk) {
			(await eng.read(off, Math.min(chunk, size - off))).copy(out, off);
		}
		return out;
	} finally {
		await eng.close();
	}
}

export async function withTmp<T>(fn: (dir: string) => Promise<T>, base = tmpdir()): Promise<T> {
	const dir = await mkdtemp(join(base, 'dmu-interop-'));
	try {
		return await fn(dir);
	} finally {
		await rm(dir, { recursive: true, force: true });
	}
}

/** First differing byte, for a readable failure. */
export function firstDiff(a: Buffer, b: Buffer): number {
	const n = Math.min(a.length, b.length);
	for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
	return a.length === b.length ? -1 : n;
}

/**
 * Random writes of random lengths (some unaligned, some crossing blocks),
 * applied both through an engine and to a reference buffer.
 */
export async function randomWrites(
	eng: BlockEngine,
	ref: Buffer,
	rnd: () => number,
	count: number,
	maxLen = 200_000,
): Promise<void> {
	for (let i = 0; i < count; i++) {
		const len = 1 + Math.floor(rnd() * maxLen);
		const off = Math.floor(rnd() * (ref.length - len));
		const data = Buffer.alloc(len);
		for (let j = 0; j < len; j += 4096) data.fill((Math.floor(rnd() * 255) + 1) & 0xff, j, Math.min(len, j + 4096));
		await eng.write(off, data);
		data.copy(ref, off);
	}
}

// ---------------------------------------------------------------------
// Header/table fuzzing shared by the per-format fuzz tests.


/** tmpfs when the host has one: fuzzing rewrites a file thousands of times. */
export const fastTmp = async (): Promise<string> =>
	(await stat('/dev/shm').then((s) => s.isDirectory(), () => false)) ? '/dev/shm' : tmpdir();

export interface FuzzResult {
	iterations: number;
	opened: number;
	refused: number;
	/** DmuErrors thrown by map() on tables found bad only when read. */
	lateErrors: number;
	failures: string[];
}

export interface FuzzSpec {
	plugin: Plugin;
	/** The seed image's bytes (small: it is rewritten every iteration). */
	seed: Buffer;
	/** Byte ranges holding headers and tables: where mutations land. */
	regions: Array<[number, number]>;
	/** Make checksums right again after mutating (most of the time). */
	fix?: (b: Buffer) => void;
	iterations: number;
	seedValue: number;
	dir: string;
	name: string;
}

const INTERESTING = [0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x200, 0x1000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff];

function mutate(b: Buffer, spec: FuzzSpec, rnd: () => number): void {
	const n = 1 + Math.floor(rnd() * 4);
	for (let k = 0; k < n; k++) {
		const [s, e] = spec.regions[Math.floor(rnd() * spec.regions.length)] as [number, number];
		const at = s + Math.floor(rnd() * Math.max(1, e - s));
		if (at >= b.length) continue;
		const kind = rnd();
		if (kind < 0.4) b[at] = Math.floor(rnd() * 256);
		else if (kind < 0.6) b[at] = (b[at] as number) ^ (1 << Math.floor(rnd() * 8));
		else if (at + 4 <= b.length) {
			const v = INTERESTING[Math.floor(rnd() * INTERESTING.length)] as number;
			if (rnd() < 0.5) b.writeUInt32BE(v >>> 0, at);
			else b.writeUInt32LE(v >>> 0, at);
		}
	}
}

const withTimeout = <T>(p: Promise<T>, ms: number, what: string): Promise<T> =>
	new Promise<T>((res, rej) => {
		const timer = setTimeout(() => rej(new Error(`hang: ${what} took over ${ms} ms`)), ms);
		p.then(
			(v) => {
				clearTimeout(timer);
				res(v);
			},
			(e) => {
				clearTimeout(timer);
				rej(e);
			},
		);
	});

/** Check one decision stays inside its device (or the scratch area). */
async function inBounds(img: Image, d: MapDecision, block: bigint, sizes: Map<number, bigint>): Promise<string | undefined> {
	if (d.kind !== 'map') return undefined;
	// As the kernel checks: the whole block lies inside the device.
	const used = BigInt(img.blockSize);
	const check = async (dev: number, sector: bigint, what: string) => {
		if (dev === img.devices.length) return undefined; // scratch
		const dv = img.devices[dev];
		if (!dv) return `${what}: device ${dev} of ${img.devices.length}`;
		let size = sizes.get(dev);
		if (size === undefined) {
			size = BigInt((await stat(dv.path)).size);
			sizes.set(dev, size);
		}
		if (sector < 0n || sector * 512n + used > size) return `${what}: block ${block} -> dev ${dev} sector ${sector} past ${size}`;
		return undefined;
	};
	return (await check(d.dev, d.sector, 'map')) ?? (d.copyFrom ? await check(d.copyFrom.dev, d.copyFrom.sector, 'copy') : undefined);
}

/**
 * Run the mutations in a few lanes at once: each lane has its own file and
 * PRNG stream (so runs repeat exactly), and the time goes to waiting on
 * file I/O, which lanes overlap.
 */
export async function fuzzFormat(spec: FuzzSpec, lanes = 4): Promise<FuzzResult> {
	const per = Math.ceil(spec.iterations / lanes);
	const parts = await Promise.all(
		Array.from({ length: lanes }, (_, k) =>
			fuzzLane({
				...spec,
				iterations: Math.min(per, spec.iterations - k * per),
				seedValue: spec.seedValue * 31 + k,
				name: `${k}-${spec.name}`,
			}),
		),
	);
	return parts.reduce((a, r) => ({
		iterations: a.iterations + r.iterations,
		opened: a.opened + r.opened,
		refused: a.refused + r.refused,
		lateErrors: a.lateErrors + r.lateErrors,
		failures: [...a.failures, ...r.failures],
	}));
}

async function fuzzLane(spec: FuzzSpec): Promise<FuzzResult> {
	const rnd = prng(spec.seedValue);
	const path = join(spec.dir, spec.name);
	const fh = await openFile(path, 'w+');
	const res: FuzzResult = { iterations: 0, opened: 0, refused: 0, lateErrors: 0, failures: [] };
	let next = 0n;
	let grew = true;
	let image: Image | undefined;
	const scratch: ScratchArea = {
		get dev() {
			return image ? image.devices.length : -1;
		},
		async put(data) {
			const s = next;
			next += BigInt(Math.ceil(data.length / 512));
			return s;
		},
	};
	try {
		for (let i = 0; i < spec.iterations && res.failures.length < 5; i++) {
			res.iterations++;
			const b = Buffer.from(spec.seed);
			mutate(b, spec, rnd);
			if (spec.fix && rnd() < 0.85) spec.fix(b);
			await fh.write(b, 0, b.length, 0);
			if (grew) await fh.truncate(b.length);
			grew = false;
			image = undefined;
			try {
				const opts = { scratch, allowedRoots: [spec.dir] };
				image = await withTimeout(
					spec.plugin.open(path, opts).catch((e) =>
						// Read-only kinds (streamOptimized) are still fuzzed, read-only.
						isDmuError(e) && e.code === 'DMU_ERR_READ_ONLY' ? spec.plugin.open(path, { ...opts, readOnly: true }) : Promise.reject(e),
					),
					5000,
					'open',
				);
			} catch (e) {
				if (isDmuError(e)) res.refused++;
				else res.failures.push(`iteration ${i}: open threw ${(e as Error).stack ?? e}`);
				continue;
			}
			res.opened++;
			const img = image as Image;
			try {
				const blocks = (img.virtualSize + BigInt(img.blockSize) - 1n) / BigInt(img.blockSize);
				const sizes = new Map<number, bigint>();
				const probe = [0n, 1n, 2n, blocks - 1n, blocks / 2n, BigInt(Math.floor(rnd() * Number(blocks)))];
				// Write probes (allocation) in one iteration of three: they cost most.
				const writes = i % 3 === 0;
				for (const [k, block] of probe.entries()) {
					if (block < 0n || block >= blocks) continue;
					const write = writes && k >= 4;
					grew ||= write;
					const d = await withTimeout(img.map({ block, write, wholeBlock: false, roFault: false }), 5000, 'map');
					if (write) sizes.clear();
					const bad = await inBounds(img, d, block, sizes);
					if (bad) res.failures.push(`iteration ${i}: ${bad}`);
				}
				const past = await img.map({ block: blocks + 5n, write: false, wholeBlock: false, roFault: false });
				if (past.kind !== 'error') res.failures.push(`iteration ${i}: block past the end mapped to ${past.kind}`);
			} catch (e) {
				if (isDmuError(e)) res.lateErrors++;
				else res.failures.push(`iteration ${i}: map threw ${(e as Error).stack ?? e}`);
			} finally {
				await img.close().catch((e) => {
					if (!isDmuError(e)) res.failures.push(`iteration ${i}: close threw ${(e as Error).message}`);
				});
			}
		}
	} finally {
		await fh.close();
	}
	return res;
}
