/**
 * The convert reader (src/convert/source.ts) on its own: what a chunk's
 * `ranges` promise (the source's bytes are there; everything else reads as
 * zeros and is left unfilled), fillGaps(), and the page-aligned buffers.
 * Images come from qemu-img/qemu-io; qemu-img convert -O raw is the truth.
 */
import { join } from 'node:path';
import t from 'tap';
import { fillGaps, pageAligned, type Ranges, SourceReader } from '../../src/convert/source.js';
import { firstDiff, MiB, prng, qemuImg, qemuIo, qemuRaw, withTmp } from './convert-support.js';

t.test('fillGaps zeros exactly what the ranges leave out', async (t) => {
	const rnd = prng(61);
	for (let iter = 0; iter < 200; iter++) {
		const len = 1 + Math.floor(rnd() * 4096);
		const ranges: Ranges = [];
		for (let at = Math.floor(rnd() * 64); at < len; ) {
			const e = Math.min(len, at + 1 + Math.floor(rnd() * 200));
			ranges.push([at, e]);
			at = e + 1 + Math.floor(rnd() * 200);
		}
		const from = Math.floor(rnd() * len);
		const to = from + Math.floor(rnd() * (len - from + 1));
		const buf = Buffer.alloc(len, 0xee);
		fillGaps(buf, ranges, from, to);
		for (let i = 0; i < len; i++) {
			const covered = ranges.some(([s, e]) => s <= i && i < e);
			const want = i >= from && i < to && !covered ? 0 : 0xee;
			if (buf[i] !== want) {
				t.fail(`iteration ${iter}: byte ${i} is ${buf[i]}, want ${want}`);
				return;
			}
		}
	}
	t.pass('200 random range sets');
});

t.test('pageAligned hands out separate buffers of the size asked', async (t) => {
	const bufs = pageAligned(MiB, 3);
	t.equal(bufs.length, 3);
	for (const [i, b] of bufs.entries()) {
		t.equal(b.length, MiB);
		b.fill(i + 1);
	}
	t.ok(
		bufs.every((b, i) => b.every((x) => x === i + 1)),
		'no two overlap',
	);
});

for (const fmt of ['raw', 'qcow2', 'vmdk']) {
	t.test(`${fmt}: chunks hold the source's bytes in their ranges, zeros elsewhere`, (t) =>
		withTmp(async (dir) => {
			const path = join(dir, `src.${fmt}`);
			await qemuImg('create', '-f', fmt, path, '24M');
			await qemuIo(fmt, path, [
				'write -P 0x11 0 100k',
				'write -P 0x22 3M 1M',
				'write -z 8M 2M',
				'write -P 0x33 9M 64k',
				'write -P 0x44 23M 1M',
			]);
			const want = await qemuRaw(fmt, path, dir);
			const r = await SourceReader.open(path, fmt);
			try {
				const chunk = 4 * MiB;
				const [buf] = pageAligned(chunk, 1);
				let covered = 0;
				for (let off = 0; off < want.length; off += chunk) {
					// Garbage first: what the reader does not fill must be left to fillGaps.
					buf!.fill(0xa5);
					const c = await r.read(BigInt(off), chunk, buf);
					let last = 0;
					for (const [s, e] of c.ranges) {
						t.ok(s >= last && e > s && e <= chunk, `${fmt}: range [${s}, ${e}) at ${off} is sorted and inside the chunk`);
						last = e;
						covered += e - s;
						t.equal(firstDiff(c.data.subarray(s, e), want.subarray(off + s, off + e)), -1, `${fmt}: bytes of [${s}, ${e}) at ${off}`);
					}
					fillGaps(c.data, c.ranges, 0, chunk);
					t.equal(firstDiff(c.data, want.subarray(off, off + chunk)), -1, `${fmt}: the chunk at ${off}, gaps filled`);
				}
				t.ok(covered < want.length / 2, `${fmt}: holes are left out of the ranges (${covered} of ${want.length} bytes read)`);
			} finally {
				await r.close();
			}
		}),
	);
}
