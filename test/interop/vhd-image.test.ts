/**
 * vhd against qemu-img (format "vpc"): images qemu makes read identically
 * through dmu; images dmu makes and writes read identically through qemu.
 * Differencing disks (qemu has no parent support) are checked against a
 * reference buffer, including partial sector bitmaps.
 */
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { BlockEngine } from '../../src/plugins/engine.js';
import { loadPlugin, probeFormat } from '../../src/plugins/registry.js';
import { readMeta } from '../../src/plugins/vhd/meta.js';
import { ImageFile } from '../../src/plugins/raw/io.js';
import { dmuRaw, firstDiff, MiB, prng, qemuImg, qemuIo, qemuRaw, randomWrites, withTmp } from './convert-support.js';

const PATTERN = ['write -P 0x11 0 64k', 'write -P 0x22 3M 1M', 'write -P 0x33 7340032 4096', 'write -z 3M 4096'];

for (const sub of ['fixed', 'dynamic']) {
	t.test(`qemu-made vpc ${sub} reads the same through dmu`, (t) =>
		withTmp(async (dir) => {
			const img = join(dir, `q-${sub}.vhd`);
			await qemuImg('create', '-f', 'vpc', '-o', `subformat=${sub}`, img, '9M');
			await qemuIo('vpc', img, PATTERN);
			const want = await qemuRaw('vpc', img, dir);
			const got = await dmuRaw('vhd', img);
			t.equal(got.length, want.length, 'same size as qemu');
			t.equal(firstDiff(got, want), -1, 'same bytes as qemu');
			const info = await (await loadPlugin('vhd')).info(img);
			t.equal(info.details.subformat, sub);
			t.equal((await probeFormat(img)).name, 'vhd', 'probed as vhd (fixed: by its last sector)');
		}),
	);
}

for (const sub of ['fixed', 'dynamic']) {
	t.test(`dmu-made vhd ${sub} written by dmu reads the same through qemu`, (t) =>
		withTmp(async (dir) => {
			const img = join(dir, `d-${sub}.vhd`);
			const vhd = await loadPlugin('vhd');
			await vhd.create(img, { size: BigInt(10 * MiB), options: { subformat: sub } });
			const eng = await BlockEngine.open(vhd, img);
			const ref = Buffer.alloc(Number(eng.image.virtualSize));
			await randomWrites(eng, ref, prng(sub.length), 40);
			await eng.close();
			const info = JSON.parse(await qemuImg('info', '-f', 'vpc', '--output=json', img));
			t.equal(info.format, 'vpc');
			t.equal(info['virtual-size'], ref.length, 'qemu agrees on the size');
			t.equal(firstDiff(await qemuRaw('vpc', img, dir), ref), -1, 'qemu reads what dmu wrote');
			t.equal(firstDiff(await dmuRaw('vhd', img), ref), -1, 'dmu reads it back');
			const chk = await vhd.check(img);
			t.same(chk.corruptions, [], 'dmu check is clean');
		}),
	);
}

t.test('new blocks never share a page with metadata (kernel writes data with direct I/O)', (t) =>
	withTmp(async (dir) => {
		// qemu puts its first block right after the BAT, at no page boundary.
		const img = join(dir, 'q.vhd');
		await qemuImg('create', '-f', 'vpc', '-o', 'subformat=dynamic', img, '16M');
		const vhd = await loadPlugin('vhd');
		const f = await ImageFile.open(img, false);
		const meta = await readMeta(f);
		await f.close();
		const batEnd = Number((meta.header?.tableOffset ?? 0n) + BigInt((meta.header?.maxTableEntries ?? 0) * 4));
		const image = await vhd.open(img, {});
		const bs = image.blockSize;
		let metaEnd = batEnd;
		for (const block of [3n, 0n, 5n]) {
			const d = await image.map({ block, write: true, wholeBlock: false, roFault: false });
			t.equal(d.kind, 'map', `block ${block} allocated`);
			if (d.kind !== 'map') continue;
			const data = Number(d.sector) * 512;
			t.equal(data % 4096, 0, `block ${block}: data starts a page`);
			const bitmapPage = Math.floor((data - 512) / 4096) * 4096;
			t.ok(bitmapPage >= metaEnd, `block ${block}: its bitmap's page holds nothing before it (${bitmapPage} >= ${metaEnd})`);
			metaEnd = data + bs;
		}
		await image.close();
		const out = await qemuImg('convert', '-f', 'vpc', '-O', 'raw', img, join(dir, 'q.raw'));
		t.equal(out, '', 'qemu still opens and reads the image');
		const chk = await vhd.check(img);
		t.same(chk.corruptions, [], 'dmu check is clean');
	}),
);

t.test('differencing vhd: parent chain, writes, partial sector bitmaps', (t) =>
	withTmp(async (dir) => {
		const base = join(dir, 'base.vhd');
		await qemuImg('create', '-f', 'vpc', '-o', 'subformat=dynamic', base, '8M');
		await qemuIo('vpc', base, ['write -P 0x5a 0 8M']);
		const baseBytes = await qemuRaw('vpc', base, dir);
		const vhd = await loadPlugin('vhd');
		const child = join(dir, 'child.vhd');
		await vhd.create(child, { base });
		const info = await vhd.info(child);
		t.equal(info.details.subformat, 'differencing');
		t.equal(info.backing?.path, base);
		t.equal(firstDiff(await dmuRaw('vhd', child), baseBytes), -1, 'a fresh child reads as its parent');
		const eng = await BlockEngine.open(vhd, child);
		const ref = Buffer.from(baseBytes);
		await randomWrites(eng, ref, prng(7), 30);
		await eng.close();
		t.equal(firstDiff(await dmuRaw('vhd', child), ref), -1, 'child = parent + writes');

		// Clear half of block 0's bitmap: those sectors come from the parent again.
		const f = await ImageFile.open(child, true);
		const meta = await readMeta(f);
		const entry = meta.bat![0]!;
		t.not(entry, 0xffffffff, 'block 0 allocated');
		await f.write(BigInt(entry) * 512n, Buffer.alloc(256, 0));
		await f.close();
		baseBytes.copy(ref, 0, 0, 1 * MiB);
		t.equal(firstDiff(await dmuRaw('vhd', child), ref), -1, 'bitmap-0 sectors read from the parent');
		// A small write into the partial block keeps the parent's sectors.
		const e2 = await BlockEngine.open(vhd, child);
		await e2.write(4096, Buffer.alloc(512, 0x77));
		await e2.close();
		ref.fill(0x77, 4096, 4608);
		t.equal(firstDiff(await dmuRaw('vhd', child), ref), -1, 'write to a partial block merges');

		// The parent must live under the image's directory or an allowed root.
		const other = join(dir, 'sub');
		await mkdir(other);
		const moved = join(other, 'child.vhd');
		await writeFile(moved, await readFile(child));
		await t.rejects(vhd.open(moved, { readOnly: true }), { code: 'DMU_ERR_BACKING_PATH' });
		const ok = await vhd.open(moved, { readOnly: true, allowedRoots: [dir] });
		await ok.close();
	}),
);
