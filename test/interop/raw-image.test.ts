/**
 * raw: the identity map, including a last block that is only partly
 * there, and raw files as backing files of other formats (block sizes
 * that differ from the top image's).
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { BlockEngine } from '../../src/plugins/engine.js';
import { loadPlugin } from '../../src/plugins/registry.js';
import { dmuRaw, firstDiff, prng, qemuImgStatus, randomWrites, withTmp } from './convert-support.js';

t.test('raw of an odd size: reads, writes, size kept', (t) =>
	withTmp(async (dir) => {
		const raw = await loadPlugin('raw');
		const path = join(dir, 'odd.raw');
		const size = 1024 * 1024 + 4096 + 512;
		const ref = Buffer.alloc(size);
		for (let i = 0; i < size; i += 512) ref.fill((i / 512) & 0xff, i, i + 512);
		await writeFile(path, ref);
		t.equal(firstDiff(await dmuRaw('raw', path), ref), -1, 'reads the file');
		const eng = await BlockEngine.open(raw, path);
		t.equal(eng.image.virtualSize, BigInt(size));
		t.equal(eng.image.blockSize, 512, 'blocks shrink until the last one is whole');
		const d = await eng.image.map({ block: BigInt(size / 512 - 1), write: false, wholeBlock: false, roFault: false });
		t.same(d, { kind: 'map', dev: 0, sector: BigInt(size / 512 - 1), writable: true, durable: true, run: 1 }, 'last block inside the file');
		const first = await eng.image.map({ block: 0n, write: false, wholeBlock: false, roFault: false, maxRun: 1 << 20 });
		t.match(first, { dev: 0, sector: 0n, run: size / 512 }, 'one identity run to the end of the disk');
		await randomWrites(eng, ref, prng(1), 30, 70_000);
		await eng.write(size - 1000, Buffer.alloc(1000, 0xee)); // inside the partial block
		ref.fill(0xee, size - 1000);
		await t.rejects(eng.write(size - 10, Buffer.alloc(20)), { code: 'DMU_ERR_RANGE' }, 'no write past the end');
		await eng.close();
		t.equal((await stat(path)).size, size, 'file size unchanged');
		t.equal(firstDiff(await readFile(path), ref), -1, 'file holds the writes');
		const cmp = join(dir, 'ref.raw');
		await writeFile(cmp, ref);
		t.equal((await qemuImgStatus('compare', '-f', 'raw', '-F', 'raw', cmp, path)).code, 0);
	}),
);

t.test('raw create, info, read-only, refusals', (t) =>
	withTmp(async (dir) => {
		const raw = await loadPlugin('raw');
		const path = join(dir, 'new.raw');
		await raw.create(path, { size: 8n * 1024n * 1024n });
		const info = await raw.info(path);
		t.equal(info.virtualSize, 8n * 1024n * 1024n);
		t.equal(info.blockSize, 65536);
		t.ok(info.actualSize < 1024n * 1024n, 'created sparse');
		const ro = await raw.open(path, { readOnly: true });
		t.same(await ro.map({ block: 0n, write: true, wholeBlock: false, roFault: false }), { kind: 'error', errno: 30 });
		t.same(await ro.map({ block: 128n, write: false, wholeBlock: false, roFault: false }), { kind: 'error', errno: 5 }, 'past the end');
		await ro.close();
		await t.rejects(raw.create(path, { size: 1n, base: path }), { code: 'DMU_ERR_UNSUPPORTED' });
		await t.rejects(raw.open(join(dir, 'missing')), { code: 'DMU_ERR_OPEN' });
	}),
);

t.test('raw as the backing file of formats with other block sizes', (t) =>
	withTmp(async (dir) => {
		const base = join(dir, 'base.raw');
		const ref = Buffer.alloc(6 * 1024 * 1024 + 4096);
		for (let i = 0; i < ref.length; i += 4096) ref.fill(((i / 4096) % 250) + 1, i, i + 4096);
		await writeFile(base, ref);
		for (const [fmt, bs] of [
			['qcow', 512],
			['qcow', 65536],
			['vhd', 2 * 1024 * 1024],
			['vmdk', 4096],
		] as const) {
			const p = await loadPlugin(fmt);
			const top = join(dir, `top-${fmt}-${bs}.img`);
			await p.create(top, { base, blockSize: bs });
			const want = Buffer.from(ref);
			const eng = await BlockEngine.open(p, top);
			const extra = Number(eng.image.virtualSize) - want.length;
			await randomWrites(eng, want, prng(bs), 10, 30_000);
			await eng.close();
			const got = await dmuRaw(fmt, top);
			t.equal(firstDiff(got.subarray(0, want.length), want), -1, `${fmt} ${bs}: base + writes`);
			t.ok(got.subarray(want.length).every((x) => x === 0), `${fmt}: ${extra} bytes past the base read zeros`);
		}
	}),
);
