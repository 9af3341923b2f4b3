/**
 * qcow (v1) against qemu-img: images qemu makes (plain, with a backing
 * file, compressed) read the same through dmu; images dmu makes and
 * writes (with and without a backing file, over compressed clusters) read
 * the same through qemu. qemu-img cannot check qcow v1, so we compare.
 */
import { join } from 'node:path';
import t from 'tap';
import { BlockEngine } from '../../src/plugins/engine.js';
import { loadPlugin } from '../../src/plugins/registry.js';
import { dmuRaw, firstDiff, MiB, prng, qemuImg, qemuIo, qemuRaw, randomWrites, withTmp } from './convert-support.js';

const PATTERN = ['write -P 0x11 0 64k', 'write -P 0x22 3M 1M', 'write -P 0x33 7340032 4096', 'write -P 0x44 8125952 4096'];

t.test('qemu-made qcow reads the same through dmu', (t) =>
	withTmp(async (dir) => {
		const img = join(dir, 'q.qcow');
		await qemuImg('create', '-f', 'qcow', img, '9M');
		await qemuIo('qcow', img, PATTERN);
		t.equal(firstDiff(await dmuRaw('qcow', img), await qemuRaw('qcow', img, dir)), -1, 'same bytes as qemu');
	}),
);

t.test('qemu-made qcow over a backing chain (qcow over raw)', (t) =>
	withTmp(async (dir) => {
		const base = join(dir, 'base.raw');
		// qemu gives backed qcow images 512-byte clusters: keep the disk small.
		await qemuImg('create', '-f', 'raw', base, '4M');
		await qemuIo('raw', base, ['write -P 0x5a 0 4M']);
		const mid = join(dir, 'mid.qcow');
		await qemuImg('create', '-f', 'qcow', '-b', 'base.raw', '-F', 'raw', mid);
		await qemuIo('qcow', mid, ['write -P 0x61 1M 100k']);
		const top = join(dir, 'top.qcow');
		await qemuImg('create', '-f', 'qcow', '-b', 'mid.qcow', '-F', 'qcow', top);
		await qemuIo('qcow', top, ['write -P 0x62 1050000 3000', 'write -P 0x63 3M 4096']);
		const info = await (await loadPlugin('qcow')).info(top);
		t.equal(info.backing?.path, mid);
		t.equal(firstDiff(await dmuRaw('qcow', top), await qemuRaw('qcow', top, dir)), -1, 'same bytes as qemu');
	}),
);

t.test('compressed qcow: read, then written over by dmu', (t) =>
	withTmp(async (dir) => {
		// qemu-img convert -c to qcow fails in qemu 7.2; qemu-io writes
		// compressed clusters fine.
		const img = join(dir, 'c.qcow');
		await qemuImg('create', '-f', 'qcow', img, '9M');
		await qemuIo('qcow', img, ['write -c -P 0x21 0 4k', 'write -c -P 0x22 3M 4k', 'write -c -P 0x23 3149824 4k', 'write -P 0x24 8M 4k']);
		const qcow = await loadPlugin('qcow');
		t.equal((await qcow.info(img)).details.compressedClusters, 3, 'qemu compressed 3 clusters');
		const ref = await qemuRaw('qcow', img, dir);
		t.equal(firstDiff(await dmuRaw('qcow', img), ref), -1, 'same bytes as qemu');
		const eng = await BlockEngine.open(qcow, img);
		await eng.write(3 * MiB + 100, Buffer.alloc(300, 0x99)); // inside a compressed cluster
		ref.fill(0x99, 3 * MiB + 100, 3 * MiB + 400);
		await randomWrites(eng, ref, prng(5), 20);
		await eng.close();
		t.equal(firstDiff(await qemuRaw('qcow', img, dir), ref), -1, 'qemu reads what dmu wrote');
	}),
);

t.test('dmu-made qcow, plain and over a backing file, written by dmu', (t) =>
	withTmp(async (dir) => {
		const qcow = await loadPlugin('qcow');
		const plain = join(dir, 'p.qcow');
		await qcow.create(plain, { size: BigInt(4 * MiB) });
		let eng = await BlockEngine.open(qcow, plain);
		const ref = Buffer.alloc(4 * MiB);
		await randomWrites(eng, ref, prng(9), 40);
		await eng.close();
		t.equal(firstDiff(await qemuRaw('qcow', plain, dir), ref), -1, 'qemu reads the plain image');

		const child = join(dir, 'c.qcow');
		await qcow.create(child, { base: plain, blockSize: 512 });
		eng = await BlockEngine.open(qcow, child);
		await randomWrites(eng, ref, prng(10), 20, 5000);
		await eng.close();
		t.equal(firstDiff(await qemuRaw('qcow', child, dir), ref), -1, 'qemu reads child = base + writes');
		t.equal(firstDiff(await dmuRaw('qcow', child), ref), -1, 'dmu reads the same');
		t.same((await qcow.check(child)).corruptions, []);
	}),
);

t.test('backing loops and escapes are refused', (t) =>
	withTmp(async (dir) => {
		const qcow = await loadPlugin('qcow');
		const a = join(dir, 'a.qcow');
		const b = join(dir, 'b.qcow');
		// a -> b -> a, written by qemu-img with -u (no checks).
		await qemuImg('create', '-f', 'qcow', b, '1M');
		await qemuImg('create', '-f', 'qcow', '-u', '-b', 'b.qcow', '-F', 'qcow', a, '1M');
		await qemuImg('create', '-f', 'qcow', '-u', '-b', 'a.qcow', '-F', 'qcow', b, '1M');
		await t.rejects(qcow.open(a, { readOnly: true }), { code: 'DMU_ERR_BACKING_LOOP' });
		const self = join(dir, 'self.qcow');
		await qemuImg('create', '-f', 'qcow', '-u', '-b', 'self.qcow', '-F', 'qcow', self, '1M');
		await t.rejects(qcow.open(self, { readOnly: true }), { code: 'DMU_ERR_BACKING_LOOP' });
		const esc = join(dir, 'esc.qcow');
		await qemuImg('create', '-f', 'qcow', '-u', '-b', '/etc/passwd', '-F', 'raw', esc, '1M');
		await t.rejects(qcow.open(esc, { readOnly: true }), { code: 'DMU_ERR_BACKING_PATH' }, 'a header cannot name /etc/passwd');
		const ok = await qcow.open(esc, { readOnly: true, allowedRoots: ['/etc'] });
		await ok.close();
	}),
);
