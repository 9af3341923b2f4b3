/**
 * 10,000 mutated VHD headers, BATs and parent locators (seeded, so every
 * run is the same): each opens and maps inside its files, or is refused
 * with a DmuError. Checksums are mostly recomputed so mutations get past
 * them and reach the deeper checks.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { BlockEngine } from '../../src/plugins/engine.js';
import { loadPlugin } from '../../src/plugins/registry.js';
import { checksum } from '../../src/plugins/vhd/layout.js';
import { fastTmp, fuzzFormat, withTmp } from './convert-support.js';

function fixChecksums(b: Buffer) {
	const fix = (at: number, len: number, field: number) => {
		if (at < 0 || at + len > b.length) return;
		const s = b.subarray(at, at + len);
		s.writeUInt32BE(checksum(s, field), field);
	};
	fix(0, 512, 64);
	fix(512, 1024, 36);
	fix(b.length - 512, 512, 64);
}

t.test('fuzz vhd metadata', async (t) =>
	withTmp(async (dir) => {
		const vhd = await loadPlugin('vhd');
		const seeds: Array<{ name: string; sub: string; iterations: number }> = [
			{ name: 'dyn.vhd', sub: 'dynamic', iterations: 6000 },
			{ name: 'diff.vhd', sub: 'differencing', iterations: 3000 },
			{ name: 'fixed.vhd', sub: 'fixed', iterations: 1000 },
		];
		const parent = join(dir, 'parent.vhd');
		await vhd.create(parent, { size: 256n * 1024n, blockSize: 4096 });
		let total = 0;
		for (const s of seeds) {
			const seedPath = join(dir, `seed-${s.name}`);
			await vhd.create(seedPath, {
				blockSize: 4096,
				...(s.sub === 'differencing' ? { base: parent } : { size: 256n * 1024n, options: { subformat: s.sub } }),
			});
			const eng = await BlockEngine.open(vhd, seedPath, { allowedRoots: [dir] });
			for (const off of [0, 8192, 100_000, 250_000]) await eng.write(off, Buffer.alloc(1000, 0xab));
			await eng.close();
			const seed = await readFile(seedPath);
			const r = await fuzzFormat({
				plugin: vhd,
				seed,
				regions: [
					[0, 512],
					[512, 1536],
					[1536, Math.min(seed.length, 1536 + 1024)],
					[seed.length - 512, seed.length],
				],
				fix: fixChecksums,
				iterations: s.iterations,
				seedValue: 0x5eed + s.iterations,
				dir,
				name: s.name,
			});
			t.same(r.failures, [], `${s.sub}: no crash, hang or out-of-file mapping`);
			t.equal(r.iterations, s.iterations);
			t.ok(r.opened > 0 && r.refused > 0, `${s.sub}: ${r.opened} opened, ${r.refused} refused, ${r.lateErrors} late errors`);
			total += r.iterations;
		}
		t.ok(total >= 10_000, `${total} mutated images`);
	}, await fastTmp()),
);
