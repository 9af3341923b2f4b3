#!/usr/bin/env node
/**
 * Issue-6 benchmark: `dmu convert` against `qemu-img convert` on the same
 * sparse image, host only. Cases: qcow2 -> raw, raw -> qcow2, vmdk -> qcow2.
 * Ratio = qemu-img time / dmu time (> 1: dmu is faster); goal >= 1.0.
 * The verdict compares each tool's best run: this machine's disk now and
 * then stalls a whole run by seconds (a plain dd of 1 GiB with fdatasync:
 * 0.7-0.8 s most times, 4-9 s at random), which only ever adds time, and
 * to whichever tool it lands on. Medians are printed beside it.
 * Every output is checked with `qemu-img compare` against the source, so a
 * fast but wrong convert fails the run. See README.md.
 *
 *   npm run build && node dist/bench/convert/run.js [--size-gib 4] [--repeat 9]
 */
import { randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { execa } from 'execa';
import { runMain } from '../../src/cli/run.js';
import { DmuError } from '../../src/errors.js';
import { prng } from '../../test/support/prng.js';
import { positive } from '../options.js';

const REPO_ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../..');
const DMU = path.join(REPO_ROOT, 'dist/bin/dmu.mjs');
const BLOCK = 64 * 1024;
const GOAL = 1.0;

const program = new Command('bench-convert')
	.description('dmu convert vs qemu-img convert on one sparse image: qcow2->raw, raw->qcow2, vmdk->qcow2')
	.option('--size-gib <n>', 'virtual size of the source image, GiB', positive('--size-gib'), 4)
	.option('--fill <pct>', 'percent of 64 KiB blocks written with random data', positive('--fill'), 25)
	.option('--repeat <n>', 'runs per case and tool (which tool goes first alternates); the best of them is compared', positive('--repeat'), 9)
	.option('--dir <dir>', 'work directory (default: a new one under the OS temp dir)')
	.option('--keep', 'keep the work directory')
	.showHelpAfterError()
	.exitOverride();

interface Opts {
	sizeGib: number;
	fill: number;
	repeat: number;
	dir?: string;
	keep?: boolean;
}

interface Case {
	name: string;
	src: string; // file name in the work dir
	from: string;
	to: string;
}

const CASES: Case[] = [
	{ name: 'qcow2 -> raw', src: 'src.qcow2', from: 'qcow2', to: 'raw' },
	{ name: 'raw -> qcow2', src: 'src.raw', from: 'raw', to: 'qcow2' },
	{ name: 'vmdk -> qcow2', src: 'src.vmdk', from: 'vmdk', to: 'qcow2' },
];


/**
 * A sparse raw file: `fill`% of the 64 KiB blocks hold random bytes, in
 * extents of 1..32 blocks at random places (like files scattered over a
 * used filesystem), plus ~2% of blocks written with zeros (allocated in the
 * file but reading as zero, as after a zeroing mkfs or a deleted file).
 */
function makeRaw(file: string, sizeGib: number, fillPct: number): { dataBlocks: number; zeroBlocks: number } {
	const blocks = (sizeGib * 1024 * 1024 * 1024) / BLOCK;
	const state = new Uint8Array(blocks); // 0 hole, 1 data, 2 written zeros
	const rnd = prng(6);
	// Mark `want` holes as `kind`, in extents of 1..maxLen blocks at random places.
	const place = (want: number, maxLen: number, kind: number): number => {
		let placed = 0;
		while (placed < want) {
			const len = Math.min(1 + Math.floor(rnd() * maxLen), want - placed);
			const at = Math.floor(rnd() * (blocks - len));
			for (let i = at; i < at + len; i++) {
				if (state[i] === 0) {
					state[i] = kind;
					placed++;
				}
			}
		}
		return placed;
	};
	const data = place(Math.floor((blocks * fillPct) / 100), 32, 1);
	const zero = place(Math.floor(blocks / 50), 64, 2);
	const fd = fs.openSync(file, 'w');
	try {
		fs.ftruncateSync(fd, blocks * BLOCK);
		const buf = Buffer.alloc(BLOCK * 32);
		const zeros = Buffer.alloc(BLOCK * 32);
		for (let i = 0; i < blocks; ) {
			const kind = state[i]!;
			let j = i + 1;
			while (j < blocks && j - i < 32 && state[j] === kind) j++;
			if (kind !== 0) {
				const n = (j - i) * BLOCK;
				const b = kind === 1 ? randomFillSync(buf, 0, n) : zeros;
				fs.writeSync(fd, b, 0, n, i * BLOCK);
			}
			i = j;
		}
	} finally {
		fs.closeSync(fd);
	}
	return { dataBlocks: data, zeroBlocks: zero };
}

async function sh(cmd: string, args: string[]): Promise<void> {
	const r = await execa(cmd, args, { reject: false, all: true });
	if (r.exitCode !== 0) {
		const last = (r.all ?? '').trim().split('\n').slice(-1)[0] ?? '';
		throw new DmuError('DMU_ERR_BENCH_CMD', `${cmd} ${args.join(' ')} failed (exit ${r.exitCode}): ${last}`);
	}
}

/**
 * Time one convert until its output is on disk. `dmu convert` fdatasyncs
 * its output at close; `qemu-img convert` (default cache mode unsafe) does
 * not, so `sync DST` (an fsync of the file) is inside the timed window for
 * both tools: the same durable result, and for dmu an almost free no-op.
 * The global sync before starts each run without the last one's dirty pages.
 */
async function timed(cmd: string, args: string[], dst: string): Promise<number> {
	fs.rmSync(dst, { force: true });
	await sh('sync', []);
	const t0 = process.hrtime.bigint();
	await sh(cmd, args);
	await sh('sync', [dst]);
	return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** A run this much slower than its tool's best met a disk stall (see the top of this file). */
const STALL = 1.5;
const stalled = (xs: number[], best: number) => xs.filter((x) => x > STALL * best).length;

const median = (xs: number[]) => {
	const s = [...xs].sort((a, b) => a - b);
	const m = Math.floor(s.length / 2);
	return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

runMain('bench-convert', async () => {
	program.parse(process.argv);
	const o = program.opts<Opts>();
	if (o.fill > 100) throw new DmuError('DMU_ERR_BENCH_ARGS', '--fill must be a percentage (1..100)');
	if (!fs.existsSync(DMU)) throw new DmuError('DMU_ERR_BENCH_BUILD', `${DMU} is missing: run npm run build`);
	const dir = o.dir ? path.resolve(o.dir) : fs.mkdtempSync(path.join(os.tmpdir(), 'dmu-bench-convert-'));
	fs.mkdirSync(dir, { recursive: true });
	const f = (n: string) => path.join(dir, n);
	const cleanup = () => {
		if (!o.keep) fs.rmSync(dir, { recursive: true, force: true });
	};
	process.on('SIGINT', () => {
		cleanup();
		process.exit(130);
	});
	try {
		const { stdout: uptime } = await execa('uptime');
		process.stdout.write(`bench-convert: ${o.sizeGib} GiB, ${o.fill}% data, ${o.repeat} runs per tool; ${dir}\nload: ${uptime.trim()}\n`);
		const t0 = Date.now();
		const fill = makeRaw(f('src.raw'), o.sizeGib, o.fill);
		await sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', f('src.raw'), f('src.qcow2')]);
		await sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', f('src.raw'), f('src.vmdk')]);
		process.stdout.write(
			`source: ${fill.dataBlocks} data blocks + ${fill.zeroBlocks} zero-written blocks of 64 KiB, ` +
				`qcow2 and vmdk made by qemu-img (${((Date.now() - t0) / 1000).toFixed(1)} s)\n\n`,
		);

		const results: { c: Case; qemu: number[]; dmu: number[] }[] = [];
		for (const c of CASES) {
			const src = f(c.src);
			const dst = f(`out.${c.to}`);
			const qemu: number[] = [];
			const dmu: number[] = [];
			const runQemu = async () => {
				qemu.push(await timed('qemu-img', ['convert', '-f', c.from, '-O', c.to, src, dst], dst));
				await sh('qemu-img', ['compare', '-q', '-f', 'raw', '-F', c.to, f('src.raw'), dst]);
			};
			const runDmu = async () => {
				dmu.push(await timed('node', [DMU, 'convert', '-f', c.from, '-O', c.to, src, dst], dst));
				await sh('qemu-img', ['compare', '-q', '-f', 'raw', '-F', c.to, f('src.raw'), dst]);
			};
			for (let i = 0; i < o.repeat; i++) {
				if (i % 2 === 0) {
					await runQemu();
					await runDmu();
				} else {
					await runDmu();
					await runQemu();
				}
				process.stdout.write(`${c.name} run ${i + 1}: qemu-img ${qemu[i]!.toFixed(2)} s, dmu ${dmu[i]!.toFixed(2)} s (both outputs compare equal)\n`);
			}
			fs.rmSync(dst, { force: true });
			results.push({ c, qemu, dmu });
		}

		process.stdout.write(
			`\n${'case'.padEnd(15)}${'best: qemu-img'.padStart(15)}${'dmu'.padStart(7)}${'ratio'.padStart(7)}` +
				`${'median: qemu-img'.padStart(18)}${'dmu'.padStart(7)}${'ratio'.padStart(7)}${'stalled'.padStart(10)}  goal >= ${GOAL.toFixed(1)}\n`,
		);
		let miss = 0;
		for (const r of results) {
			const [qb, db] = [Math.min(...r.qemu), Math.min(...r.dmu)];
			const [qm, dm] = [median(r.qemu), median(r.dmu)];
			const ratio = qb / db;
			if (ratio < GOAL) miss++;
			process.stdout.write(
				`${r.c.name.padEnd(15)}${qb.toFixed(2).padStart(15)}${db.toFixed(2).padStart(7)}${ratio.toFixed(2).padStart(7)}` +
					`${qm.toFixed(2).padStart(18)}${dm.toFixed(2).padStart(7)}${(qm / dm).toFixed(2).padStart(7)}` +
					`${`${stalled(r.qemu, qb)}/${stalled(r.dmu, db)}`.padStart(10)}  ${ratio >= GOAL ? 'PASS' : 'MISS'}\n`,
			);
		}
		const { stdout: up2 } = await execa('uptime');
		process.stdout.write(
			`(seconds, ${o.repeat} runs per tool; ratio = qemu-img / dmu; the verdict is on the best runs; ` +
				`stalled: runs of qemu-img / dmu over ${STALL}x their tool's best)\nload at the end: ${up2.trim()}\n`,
		);
		return miss === 0 ? 0 : 1;
	} finally {
		cleanup();
	}
});
