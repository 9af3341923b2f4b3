/**
 * vmdk against qemu-img: monolithicSparse, streamOptimized, monolithicFlat
 * and a hand-written multi-extent descriptor made or read by qemu read the
 * same through dmu; disks dmu makes and writes pass `qemu-img check` and
 * read the same through qemu, redundant grain tables included.
 */
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { convert } from '../../src/convert/convert.js';
import { BlockEngine } from '../../src/plugins/engine.js';
import { loadPlugin } from '../../src/plugins/registry.js';
import { dmuRaw, firstDiff, MiB, prng, qemuImg, qemuImgStatus, qemuIo, qemuRaw, randomWrites, withTmp } from './convert-support.js';

const PATTERN = ['write -P 0x11 0 64k', 'write -P 0x22 3M 1M', 'write -P 0x33 7340032 4096', 'write -z 3M 4096', 'write -P 0x44 8126464 3584'];

for (const sub of ['monolithicSparse', 'monolithicFlat']) {
	t.test(`qemu-made vmdk ${sub} reads the same through dmu`, (t) =>
		withTmp(async (dir) => {
			const img = join(dir, 'q.vmdk');
			await qemuImg('create', '-f', 'vmdk', '-o', `subformat=${sub}`, img, '9M');
			await qemuIo('vmdk', img, PATTERN);
			t.equal(firstDiff(await dmuRaw('vmdk', img), await qemuRaw('vmdk', img, dir)), -1, 'same bytes as qemu');
			t.equal((await (await loadPlugin('vmdk')).info(img)).details.subformat, sub);
		}),
	);
}

t.test('qemu-made streamOptimized vmdk (compressed grains) reads the same, read-only', (t) =>
	withTmp(async (dir) => {
		const src = join(dir, 'src.raw');
		await qemuImg('create', '-f', 'raw', src, '9M');
		await qemuIo('raw', src, PATTERN);
		const img = join(dir, 's.vmdk');
		await qemuImg('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, img);
		t.equal(firstDiff(await dmuRaw('vmdk', img), await qemuRaw('raw', src, dir)), -1, 'same bytes as the source');
		await t.rejects((await loadPlugin('vmdk')).open(img), { code: 'DMU_ERR_READ_ONLY' });
		// Conversion reads compressed grains through the in-memory scratch.
		const out = join(dir, 'out.qcow');
		await convert({ src: img, dst: out, dstFormat: 'qcow' });
		t.equal((await qemuImgStatus('compare', '-f', 'raw', '-F', 'qcow', src, out)).code, 0, 'converted to qcow, qemu agrees');
	}),
);

t.test('hand-written descriptor: flat, zero and sparse extents', (t) =>
	withTmp(async (dir) => {
		const flat = join(dir, 'a.bin');
		const fb = Buffer.alloc(4 * MiB);
		for (let i = 0; i < fb.length; i += 512) fb.fill(i / 512 + 1, i, i + 512);
		await writeFile(flat, fb);
		const sp = join(dir, 's.vmdk');
		await qemuImg('create', '-f', 'vmdk', sp, '4M');
		await qemuIo('vmdk', sp, ['write -P 0x66 65536 131072', 'write -P 0x67 3M 512']);
		const desc = join(dir, 'multi.vmdk');
		await writeFile(
			desc,
			[
				'# Disk DescriptorFile',
				'version=1',
				'CID=12345678',
				'parentCID=ffffffff',
				'createType="twoGbMaxExtentSparse"',
				'RW 4096 FLAT "a.bin" 0',
				'RW 8192 SPARSE "s.vmdk"',
				'RW 2048 FLAT "a.bin" 4096',
				'ddb.adapterType = "ide"',
				'',
			].join('\n'),
		);
		const want = await qemuRaw('vmdk', desc, dir);
		t.equal(firstDiff(await dmuRaw('vmdk', desc), want), -1, 'same bytes as qemu');
		// qemu skips ZERO and read-only extent lines; check those against
		// what the spec says they hold.
		const desc2 = join(dir, 'zero.vmdk');
		await writeFile(desc2, ['# Disk DescriptorFile', 'createType="monolithicFlat"', 'RW 2048 ZERO', 'RDONLY 1024 FLAT "a.bin" 8', ''].join('\n'));
		const got = await dmuRaw('vmdk', desc2);
		t.equal(got.length, 3 * MiB / 2);
		t.ok(got.subarray(0, MiB).every((x) => x === 0), 'ZERO extent reads zeros');
		t.equal(firstDiff(got.subarray(MiB), fb.subarray(4096, 4096 + MiB / 2)), -1, 'flat extent at its offset');
		const eng = await BlockEngine.open(await loadPlugin('vmdk'), desc2);
		await t.rejects(eng.write(MiB + 512, Buffer.alloc(512)), { code: 'DMU_ERR_IO' }, 'read-only extent refuses writes');
		await eng.close();
	}),
);

for (const sub of ['monolithicSparse', 'monolithicFlat']) {
	t.test(`dmu-made vmdk ${sub} written by dmu passes qemu-img check and compare`, (t) =>
		withTmp(async (dir) => {
			const img = join(dir, 'd.vmdk');
			const vmdk = await loadPlugin('vmdk');
			await vmdk.create(img, { size: BigInt(10 * MiB), options: { subformat: sub } });
			const eng = await BlockEngine.open(vmdk, img);
			const ref = Buffer.alloc(Number(eng.image.virtualSize));
			await randomWrites(eng, ref, prng(3), 40);
			await eng.close();
			const chk = await qemuImgStatus('check', '-f', 'vmdk', img);
			t.equal(chk.code, 0, `qemu-img check: ${chk.out}`);
			t.equal(firstDiff(await qemuRaw('vmdk', img, dir), ref), -1, 'qemu reads what dmu wrote');
			t.same((await vmdk.check(img)).corruptions, [], 'dmu check clean (redundant tables in step)');
		}),
	);
}

t.test('dmu-made child vmdk over a qemu-made parent', (t) =>
	withTmp(async (dir) => {
		const base = join(dir, 'base.vmdk');
		await qemuImg('create', '-f', 'vmdk', base, '8M');
		await qemuIo('vmdk', base, ['write -P 0x5a 0 8M']);
		const vmdk = await loadPlugin('vmdk');
		const child = join(dir, 'child.vmdk');
		await vmdk.create(child, { base });
		const info = await vmdk.info(child);
		t.equal(info.backing?.path, base);
		const ref = await qemuRaw('vmdk', base, dir);
		const eng = await BlockEngine.open(vmdk, child);
		await randomWrites(eng, ref, prng(11), 25);
		await eng.close();
		const chk = await qemuImgStatus('check', '-f', 'vmdk', child);
		t.equal(chk.code, 0, `qemu-img check: ${chk.out}`);
		t.equal(firstDiff(await qemuRaw('vmdk', child, dir), ref), -1, 'qemu reads child = parent + writes');
		t.equal(firstDiff(await dmuRaw('vmdk', child), ref), -1, 'dmu reads the same');
	}),
);

t.test('a grain table made on demand never shares a page with the grain after it', (t) =>
	withTmp(async (dir) => {
		// qemu preallocates every grain table; VMware may not. Forget the
		// second primary one (GD entry 1) so dmu must add a 2 KiB table at
		// the end of the file (4 sectors) before the grain it allocates.
		const img = join(dir, 'lazy.vmdk');
		await qemuImg('create', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', img, '64M');
		const fh = await open(img, 'r+');
		const head = Buffer.alloc(512);
		await fh.read(head, 0, 512, 0);
		const gd = Number(head.readBigUInt64LE(56));
		await fh.write(Buffer.alloc(4), 0, 4, gd * 512 + 4); // entry 1: the GT for 32..64 MiB
		await fh.close();
		const vmdk = await loadPlugin('vmdk');
		const image = await vmdk.open(img, {});
		const grain = BigInt((40 * MiB) / image.blockSize);
		const d = await image.map({ block: grain, write: true, wholeBlock: true, roFault: false });
		t.equal(d.kind, 'map', 'grain allocated');
		if (d.kind === 'map') t.equal(d.sector % 8n, 0n, `grain at sector ${d.sector}: starts a page`);
		await image.close();
		const eng = await BlockEngine.open(vmdk, img);
		const ref = Buffer.alloc(Number(eng.image.virtualSize));
		await randomWrites(eng, ref, prng(9), 20);
		await eng.close();
		t.equal(firstDiff(await qemuRaw('vmdk', img, dir), ref), -1, 'qemu reads what dmu wrote');
	}),
);
