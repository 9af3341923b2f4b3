/**
 * 10,000 mutated VMDK headers, descriptors, grain directories and tables
 * (monolithicSparse and streamOptimized seeds, seeded PRNG): each opens
 * and maps inside its file, or is refused with a DmuError.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { BlockEngine } from '../../src/plugins/engine.js';
import { loadPlugin } from '../../src/plugins/registry.js';
import { fastTmp, fuzzFormat, qemuImg, qemuIo, withTmp } from './convert-support.js';

t.test('fuzz vmdk metadata', async (t) =>
	withTmp(async (dir) => {
		const vmdk = await loadPlugin('vmdk');
		const sparse = join(dir, 'seed-sparse.vmdk');
		await vmdk.create(sparse, { size: 512n * 1024n, blockSize: 4096 });
		const eng = await BlockEngine.open(vmdk, sparse);
		for (const off of [0, 8192, 300_000, 520_000]) await eng.write(off, Buffer.alloc(1000, 0xab));
		await eng.close();
		const raw = join(dir, 'src.raw');
		await qemuImg('create', '-f', 'raw', raw, '512K');
		await qemuIo('raw', raw, ['write -P 0x11 0 64k', 'write -P 0x22 256k 64k']);
		const stream = join(dir, 'seed-stream.vmdk');
		await qemuImg('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, stream);
		let total = 0;
		for (const [name, path, iterations] of [
			['sparse.vmdk', sparse, 6000],
			['stream.vmdk', stream, 4000],
		] as const) {
			const seed = await readFile(path);
			const h = seed.readBigUInt64LE(64); // overHead: end of the metadata
			const metaEnd = Math.min(seed.length, Number(h > 4096n ? 4096n : h) * 512);
			const r = await fuzzFormat({
				plugin: vmdk,
				seed,
				regions: [
					[0, 80],
					[512, 1536],
					[0, metaEnd],
					[Math.max(0, seed.length - 1536), seed.length],
				],
				iterations,
				seedValue: 0xd15c + iterations,
				dir,
				name,
			});
			t.same(r.failures, [], `${name}: no crash, hang or out-of-file mapping`);
			t.ok(r.opened > 0 && r.refused > 0, `${name}: ${r.opened} opened, ${r.refused} refused, ${r.lateErrors} late errors`);
			total += r.iterations;
		}
		t.ok(total >= 10_000, `${total} mutated images`);
	}, await fastTmp()),
);
