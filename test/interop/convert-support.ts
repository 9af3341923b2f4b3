/**
 * Helpers for the format interop tests (raw, vhd, vmdk, qcow, convert):
 * qemu-img/qemu-io through execa, temp dirs, a seeded PRNG, and reading a
 * whole disk through a plugin with BlockEngine.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { BlockEngine } from '../../src/plugins/engine.js';
import { loadPlugin } from '../../src/plugins/registry.js';
import type { OpenOptions } from '../../src/plugins/types.js';

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

export async function withTmp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
	const dir = await mkdtemp(join(tmpdir(), 'dmu-interop-'));
	try {
		return await fn(dir);
	} finally {
		await rm(dir, { recursive: true, force: true });
	}
}

/** A small deterministic PRNG (mulberry32): fuzz runs repeat exactly. */
export function prng(seed: number): () => number {
	let a = seed >>> 0;
	return () => {
		a = (a + 0x6d2b79f5) >>> 0;
		let t = a;
		t = Math.imul(t ^ (t >>> 15), t | 1);
		t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
		return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
	};
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
