/**
 * 10,000 mutated qcow (v1) headers, L1 and L2 tables (plain, compressed
 * and backed seeds, seeded PRNG): each opens and maps inside its files,
 * or is refused with a DmuError.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { BlockEngine } from '../../src/plugins/engine.js';
import { loadPlugin } from '../../src/plugins/registry.js';
import { fastTmp, fuzzFormat, qemuImg, qemuIo, withTmp } from './convert-support.js';

t.test('fuzz qcow metadata', async (t) =>
	withTmp(async (dir) => {
		const qcow = await loadPlugin('qcow');
		const plain = join(dir, 'seed-plain.qcow');
		await qcow.create(plain, { size: 512n * 1024n });
		const eng = await BlockEngine.open(qcow, plain);
		for (const off of [0, 8192, 300_000, 520_000]) await eng.write(off, Buffer.alloc(1000, 0xab));
		await eng.close();
		const comp = join(dir, 'seed-comp.qcow');
		await qemuImg('create', '-f', 'qcow', comp, '512K');
		await qemuIo('qcow', comp, ['write -c -P 0x21 0 4k', 'write -c -P 0x22 64k 4k', 'write -P 0x23 128k 4k']);
		const base = join(dir, 'base.raw');
		await qemuImg('create', '-f', 'raw', base, '512K');
		const backed = join(dir, 'seed-backed.qcow');
		await qemuImg('create', '-f', 'qcow', '-b', 'base.raw', '-F', 'raw', backed);
		await qemuIo('qcow', backed, ['write -P 0x31 1000 3000']);
		let total = 0;
		for (const [name, path, iterations] of [
			['plain.qcow', plain, 5000],
			['comp.qcow', comp, 3000],
			['backed.qcow', backed, 2000],
		] as const) {
			const seed = await readFile(path);
			const r = await fuzzFormat({
				plugin: qcow,
				seed,
				regions: [
					[0, 48],
					[0, 512],
					[0, seed.length],
				],
				iterations,
				seedValue: 0xc0c0 + iterations,
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
