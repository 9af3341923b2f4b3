/**
 * qcow2 writes judged by QEMU: images written through BlockEngine (random
 * writes, then close) pass `qemu-img check` with no errors or leaks and
 * `qemu-img compare` equals the expected bytes. Also: images dmu creates,
 * snapshot COW, dirty-bit repair, check/repair, and refusals.
 */
import { open as fsOpen, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { DmuError } from '../../src/errors.js';
import { BlockEngine } from '../../src/plugins/engine.js';
import { ImageFile } from '../../src/plugins/qcow2/file.js';
import { plugin } from '../../src/plugins/qcow2/index.js';
import { qemuCheck, qemuCompare, qemuCreate, qemuImg, qemuImgRaw, qemuIo, qemuRead, tempDir } from '../support/qemu-img.js';
import { prng } from '../support/prng.js';

const { dir, cleanup } = await tempDir('dmu-qcow2-write-');
t.teardown(cleanup);


/** Random writes through the engine, mirrored into `expected`. */
async function randomWrites(path: string, expected: Buffer, seed: number, count: number, maxLen: number, opts = {}): Promise<BlockEngine> {
	const rnd = prng(seed);
	const engine = await BlockEngine.open(plugin, path, opts);
	const size = expected.length;
	for (let i = 0; i < count; i++) {
		const len = 1 + Math.floor(rnd() * maxLen);
		const off = Math.floor(rnd() * (size - len));
		const data = Buffer.alloc(len);
		for (let j = 0; j < len; j += 4096) data.fill(Math.floor(rnd() * 256), j, Math.min(len, j + 4096));
		await engine.write(off, data);
		data.copy(expected, off);
		if (i % 17 === 16) await engine.flush();
		if (i % 23 === 22) {
			const r = Math.floor(rnd() * (size - 65536));
			const got = await engine.read(r, 65536);
			if (!got.equals(expected.subarray(r, r + 65536))) throw new Error(`read-back mismatch at ${r} after write ${i}`);
		}
	}
	await engine.close();
	return engine;
}

/** QEMU's verdict on an image we wrote: clean, and equal to `expected`. */
async function judged(tt: Test, path: string, expected: Buffer, what: string): Promise<void> {
	const c = await qemuCheck(path);
	tt.equal(c.corruptions, 0, `${what}: qemu-img check finds no corruption`);
	tt.equal(c.leaks, 0, `${what}: qemu-img check finds no leaks`);
	tt.equal(c.exitCode, 0, `${what}: qemu-img check exit 0${c.exitCode ? `: ${c.raw.slice(0, 400)}` : ''}`);
	const ref = `${path}.expected.raw`;
	await writeFile(ref, expected);
	const cmp = await qemuCompare(path, ref);
	tt.equal(cmp.exitCode, 0, `${what}: qemu-img compare equal ${cmp.stdout.trim()}`);
	const ours = await plugin.check(path);
	tt.same([ours.corruptions, ours.leaks], [[], []], `${what}: dmu check agrees`);
}

const cases: { name: string; make: (p: string) => Promise<void>; writes: number; maxLen: number }[] = [
	{ name: 'v2 64K', make: (p) => qemuCreate(p, 'qcow2', { size: 16 << 20, options: { compat: '0.10' } }), writes: 120, maxLen: 200_000 },
	{
		name: 'v3 512B refcount_bits=64 (refcount table grows)',
		make: (p) => qemuCreate(p, 'qcow2', { size: 6 << 20, options: { cluster_size: 512, refcount_bits: 64 } }),
		writes: 150,
		maxLen: 40_000,
	},
	{
		name: 'v3 4K refcount_bits=1',
		make: (p) => qemuCreate(p, 'qcow2', { size: 8 << 20, options: { cluster_size: 4096, refcount_bits: 1 } }),
		writes: 100,
		maxLen: 100_000,
	},
	{
		name: 'v3 2M',
		make: (p) => qemuCreate(p, 'qcow2', { size: 20 << 20, options: { cluster_size: 2 << 20 } }),
		writes: 30,
		maxLen: 300_000,
	},
	{
		name: 'v3 64K extended_l2 with partial clusters',
		make: async (p) => {
			await qemuCreate(p, 'qcow2', { size: 8 << 20, options: { extended_l2: 'on' } });
			await qemuIo(p, ['write -P 0x31 2k 2k', 'write -z 8k 4k', 'write -P 0x32 1M 100k']);
		},
		writes: 80,
		maxLen: 100_000,
	},
	{
		name: 'compressed (convert -c)',
		make: async (p) => {
			const src = `${p}.src`;
			await qemuCreate(src, 'qcow2', { size: 8 << 20 });
			await qemuIo(src, ['write -P 0x41 0 3M', 'write -P 0x42 5M 2M']);
			await qemuImg('convert', '-c', '-O', 'qcow2', src, p);
		},
		writes: 80,
		maxLen: 100_000,
	},
	{
		name: 'zero clusters over a raw backing, 3-deep chain',
		make: async (p) => {
			const raw = `${p}.base.raw`;
			const mid = `${p}.mid.qcow2`;
			await qemuCreate(raw, 'raw', { size: 8 << 20 });
			await qemuIo(raw, ['write -P 0x51 0 8M'], 'raw');
			await qemuCreate(mid, 'qcow2', { backing: raw, backingFormat: 'raw', options: { cluster_size: 4096 } });
			await qemuIo(mid, ['write -P 0x52 1M 1M', 'write -z 4M 1M']);
			await qemuCreate(p, 'qcow2', { backing: mid, backingFormat: 'qcow2', options: { cluster_size: 16384 } });
			await qemuIo(p, ['write -z 0 64k', 'write -P 0x53 6M 100k']);
		},
		writes: 80,
		maxLen: 100_000,
	},
	{
		name: 'dmu-created v3 64K',
		make: (p) => plugin.create(p, { size: 16n << 20n }),
		writes: 100,
		maxLen: 200_000,
	},
	{
		name: 'dmu-created v2 512B over a qcow2 backing',
		make: async (p) => {
			const base = `${p}.base.qcow2`;
			await qemuCreate(base, 'qcow2', { size: 3 << 20 });
			await qemuIo(base, ['write -P 0x61 0 3M']);
			await plugin.create(p, { base, baseFormat: 'qcow2', blockSize: 512, options: { compat: '0.10' } });
		},
		writes: 100,
		maxLen: 20_000,
	},
];

let seed = 1;
for (const c of cases) {
	const s = seed++;
	t.test(`random writes: ${c.name}`, async (tt) => {
		const p = join(dir, `${c.name.replace(/\W+/g, '_')}.qcow2`);
		await c.make(p);
		const expected = await qemuRead(p);
		await randomWrites(p, expected, s, c.writes, c.maxLen);
		await judged(tt, p, expected, c.name);
	});
}

t.test('dmu create: options and qemu-img acceptance', async (tt) => {
	for (const [compat, cs] of [
		['0.10', 512],
		['1.1', 4096],
		['1.1', 2 << 20],
	] as const) {
		const p = join(dir, `created-${compat}-${cs}.qcow2`);
		await plugin.create(p, { size: 100n << 20n, blockSize: cs, options: { compat } });
		const c = await qemuCheck(p);
		tt.equal(c.exitCode, 0, `compat ${compat} cluster ${cs}: qemu-img check clean`);
		const info = JSON.parse(await qemuImg('info', '--output=json', p)) as { 'cluster-size': number; 'virtual-size': number; 'format-specific': { data: { compat: string } } };
		tt.equal(info['cluster-size'], cs, 'cluster size');
		tt.equal(info['virtual-size'], 100 << 20, 'virtual size');
		tt.equal(info['format-specific'].data.compat, compat, 'compat');
	}
	const ext = join(dir, 'created-ext.qcow2');
	await plugin.create(ext, { size: 1n << 30n, options: { extended_l2: 'on', lazy_refcounts: 'on', refcount_bits: '8' } });
	tt.equal((await qemuCheck(ext)).exitCode, 0, 'extended_l2 + lazy_refcounts + refcount_bits=8 check clean');
	const i = await plugin.info(ext);
	tt.match(i.details, { extended_l2: true, lazy_refcounts: true, refcount_bits: 8, version: 3 }, 'info details');
	await tt.rejects(plugin.create(join(dir, 'bad.qcow2'), { size: 1n << 20n, blockSize: 1000 }), DmuError, 'bad cluster size refused');
	await tt.rejects(plugin.create(join(dir, 'bad.qcow2'), {}), DmuError, 'missing size refused');
});

t.test('internal snapshots: refused read-write unless forced; COW keeps them intact', async (tt) => {
	const p = join(dir, 'snap.qcow2');
	await qemuCreate(p, 'qcow2', { size: 4 << 20, options: { cluster_size: 4096 } });
	await qemuIo(p, ['write -P 0x71 0 4M']);
	await qemuImg('snapshot', '-c', 's1', p);
	const snapBefore = join(dir, 'snap-s1.raw');
	await qemuImg('convert', '-l', 'snapshot.name=s1', '-O', 'raw', p, snapBefore);
	await tt.rejects(plugin.open(p), { code: 'DMU_ERR_BAD_IMAGE', message: /snapshot/ }, 'read-write open refused');
	const expected = await qemuRead(p);
	await randomWrites(p, expected, 99, 60, 50_000, { force: true });
	await judged(tt, p, expected, 'after forced writes');
	const snapAfter = join(dir, 'snap-s1-after.raw');
	await qemuImg('convert', '-l', 'snapshot.name=s1', '-O', 'raw', p, snapAfter);
	tt.ok((await readFile(snapBefore)).equals(await readFile(snapAfter)), 'snapshot content unchanged');
});

/** Set or clear header bits by hand (v3 incompatible features at byte 72). */
async function patch(path: string, off: number, data: Buffer): Promise<void> {
	const fh = await fsOpen(path, 'r+');
	await fh.write(data, 0, data.length, off);
	await fh.close();
}

t.test('dirty bit: lazy refcounts and a killed qemu-io writer are repaired on open', async (tt) => {
	const p = join(dir, 'lazy.qcow2');
	await qemuCreate(p, 'qcow2', { size: 8 << 20, options: { lazy_refcounts: 'on', cluster_size: 4096 } });
	// 'abort' kills qemu-io with the image still marked dirty.
	const r = await qemuImgRaw('info', p);
	tt.equal(r.exitCode, 0);
	const { execa } = await import('execa');
	await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x81 0 1M', '-c', 'write -P 0x82 3M 512k', '-c', 'abort', p], { reject: false });
	tt.equal((await plugin.info(p)).dirty, true, 'image left dirty');
	const before = await qemuCheck(p);
	tt.not(before.exitCode, 0, `qemu-img check sees the damage before repair (exit ${before.exitCode})`);
	const expected = await qemuRead(p);
	const engine = await BlockEngine.open(plugin, p);
	await engine.close();
	tt.equal((await plugin.info(p)).dirty, false, 'dirty bit cleared on open');
	await judged(tt, p, expected, 'repaired lazy image');
	await randomWrites(p, expected, 7, 40, 60_000);
	await judged(tt, p, expected, 'repaired lazy image after writes');
});

t.test('dirty bit set by hand over wrong refcounts', async (tt) => {
	const p = join(dir, 'handdirty.qcow2');
	await qemuCreate(p, 'qcow2', { size: 2 << 20, options: { cluster_size: 65536 } });
	await qemuIo(p, ['write -P 0x91 0 1M']);
	// Refcount block is cluster 2 (qemu-img layout): zero a data cluster's refcount, leak another.
	const rb = 2 * 65536;
	const buf = Buffer.alloc(2);
	await patch(p, rb + 2 * 5, buf); // cluster 5: referenced data, refcount 0 now
	buf.writeUInt16BE(1);
	await patch(p, rb + 2 * 200, buf); // cluster 200: nothing there, refcount 1
	const chk = await plugin.check(p);
	tt.ok(chk.corruptions.length > 0 && chk.leaks.length > 0, `dmu check sees it (${chk.corruptions.length} errors, ${chk.leaks.length} leaks)`);
	const dirty = Buffer.alloc(8);
	dirty.writeBigUInt64BE(1n);
	await patch(p, 72, dirty);
	const expected = await qemuRead(p);
	const engine = await BlockEngine.open(plugin, p);
	await engine.close();
	await judged(tt, p, expected, 'hand-dirtied image');
});

t.test('check and repair (leaks, then all)', async (tt) => {
	const p = join(dir, 'repair.qcow2');
	await qemuCreate(p, 'qcow2', { size: 2 << 20, options: { cluster_size: 65536 } });
	await qemuIo(p, ['write -P 0xa1 0 1M']);
	const rb = 2 * 65536;
	// A leak QEMU can see must lie inside the file: grow it, then count cluster 25.
	await import('node:fs/promises').then((fs) => fs.truncate(p, 30 * 65536));
	const one = Buffer.alloc(2);
	one.writeUInt16BE(1);
	await patch(p, rb + 2 * 25, one);
	let r = await plugin.check(p);
	tt.equal(r.leaks.length, 1, 'one leak found');
	tt.equal(r.corruptions.length, 0, 'no corruption');
	tt.equal((await qemuCheck(p)).leaks, 1, 'qemu-img agrees: one leak');
	r = await plugin.check(p, { repair: 'leaks' });
	tt.same([r.leaks, r.corruptions], [[], []], 'clean after -r leaks');
	tt.equal((await qemuCheck(p)).exitCode, 0, 'qemu-img check clean');
	const three = Buffer.alloc(2);
	three.writeUInt16BE(3);
	await patch(p, rb + 2 * 6, three);
	r = await plugin.check(p);
	tt.ok(r.corruptions.length >= 1, 'refcount mismatch is corruption');
	tt.equal((await qemuCheck(p)).exitCode, 2, 'qemu-img agrees: corrupt');
	r = await plugin.check(p, { repair: 'all' });
	tt.same([r.leaks, r.corruptions], [[], []], 'clean after -r all');
	tt.equal((await qemuCheck(p)).exitCode, 0, 'qemu-img check clean');
});

t.test('refusals are one-line DmuErrors', async (tt) => {
	const sub = join(dir, 'sub');
	await import('node:fs/promises').then((fs) => fs.mkdir(sub));
	const outside = join(dir, 'outside.qcow2');
	await qemuCreate(outside, 'qcow2', { size: 1 << 20 });
	const top = join(sub, 'top.qcow2');
	await qemuCreate(top, 'qcow2', { backing: outside, backingFormat: 'qcow2' });
	await tt.rejects(plugin.open(top, { readOnly: true }), DmuError, 'backing outside the image directory refused');
	const ok = await plugin.open(top, { readOnly: true, allowedRoots: [dir] });
	tt.equal(ok.devices.length, 2, 'allowed with allowedRoots');
	await ok.close();

	const a = join(dir, 'loop-a.qcow2');
	const b = join(dir, 'loop-b.qcow2');
	await qemuCreate(a, 'qcow2', { size: 1 << 20 });
	await qemuCreate(b, 'qcow2', { backing: a, backingFormat: 'qcow2' });
	await qemuImg('rebase', '-u', '-F', 'qcow2', '-b', b, a);
	await tt.rejects(plugin.open(b, { readOnly: true }), { code: 'DMU_ERR_BACKING_LOOP' }, 'backing loop refused');

	const z = join(dir, 'zstd.qcow2');
	const made = await qemuImgRaw('create', '-f', 'qcow2', '-o', 'compression_type=zstd', z, '1M');
	if (made.exitCode === 0) {
		const e = await plugin.open(z, { readOnly: true }).catch((x: unknown) => x);
		tt.ok(e instanceof DmuError && /zstd/.test(e.message) && !e.message.includes('\n'), `zstd: ${(e as Error).message}`);
		tt.equal((await plugin.info(z)).details.compression_type, 'zstd', 'info still describes a zstd image');
	}

	const ro = join(dir, 'ro.qcow2');
	await qemuCreate(ro, 'qcow2', { size: 1 << 20 });
	const engine = await BlockEngine.open(plugin, ro, { readOnly: true });
	await tt.rejects(engine.write(0, Buffer.alloc(512, 1)), DmuError, 'write to a read-only image fails');
	await engine.close();
	await tt.rejects(plugin.open(join(dir, 'missing.qcow2')), DmuError, 'missing file');
});

t.test('a crash at any metadata write during commit leaves no corruption', async (tt) => {
	// Fault injection: the Nth metadata write (and all after it) fails, as if
	// the host died there. Whatever reached the file must be consistent:
	// qemu-img check may find leaks, never corruption.
	const orig = ImageFile.prototype.write;
	let budget = Number.POSITIVE_INFINITY;
	let writes = 0;
	ImageFile.prototype.write = async function (this: ImageFile, off: number, data: Buffer) {
		writes++;
		if (budget-- <= 0) throw new Error('simulated crash');
		return orig.call(this, off, data);
	};
	tt.teardown(() => {
		ImageFile.prototype.write = orig;
	});
	const base = join(dir, 'crash-base.qcow2');
	// Small clusters and 64-bit refcounts: the commit grows the refcount table,
	// allocates L2 tables and refcount blocks, and COWs clusters shared with a snapshot.
	await qemuCreate(base, 'qcow2', { size: 2 << 20, options: { cluster_size: 512, refcount_bits: 64 } });
	await qemuIo(base, ['write -P 0x11 0 256k']);
	await qemuImg('snapshot', '-c', 's1', base);
	const scenario = async (p: string): Promise<BlockEngine> => {
		await import('node:fs/promises').then((fs) => fs.copyFile(base, p));
		const engine = await BlockEngine.open(plugin, p, { force: true });
		const rnd = prng(4242);
		for (let i = 0; i < 40; i++) {
			const off = Math.floor(rnd() * ((2 << 20) - 70000));
			await engine.write(off, Buffer.alloc(1 + Math.floor(rnd() * 65536), i + 1));
		}
		return engine;
	};
	// Count the metadata writes of one full commit.
	const clean = join(dir, 'crash-clean.qcow2');
	const e0 = await scenario(clean);
	writes = 0;
	await e0.close();
	const total = writes;
	tt.ok(total > 5, `a commit makes ${total} metadata writes`);
	tt.equal((await qemuCheck(clean)).exitCode, 0, 'uninterrupted commit is clean');
	const step = Math.max(1, Math.ceil(total / 16));
	let worst = 0;
	for (let n = 0; n < total; n += step) {
		const p = join(dir, `crash-${n}.qcow2`);
		const engine = await scenario(p);
		budget = n;
		await tt.rejects(engine.flush(), /simulated crash/, `crash at write ${n}`);
		budget = Number.POSITIVE_INFINITY;
		for (const f of engine.files) await f.close();
		const c = await qemuCheck(p);
		tt.equal(c.corruptions, 0, `crash at metadata write ${n}/${total}: no corruption (${c.leaks} leaked clusters)`);
		worst = Math.max(worst, c.leaks);
	}
	tt.comment(`crash points tried: ${Math.ceil(total / step)}, most leaked clusters: ${worst}`);
});

t.test('persistent bitmaps: marked stale on write, leaks agreed with qemu-img and repaired', async (tt) => {
	const p = join(dir, 'bitmap.qcow2');
	await qemuCreate(p, 'qcow2', { size: 4 << 20 });
	await qemuIo(p, ['write -P 0x21 0 1M']);
	await qemuImg('bitmap', '--add', p, 'b0');
	await qemuIo(p, ['write -P 0x22 2M 64k']);
	const expected = await qemuRead(p);
	await randomWrites(p, expected, 5, 10, 100_000);
	const theirs = await qemuCheck(p);
	const ours = await plugin.check(p);
	tt.equal(theirs.corruptions, 0, 'qemu-img: no corruption');
	tt.ok(theirs.leaks > 0, `qemu-img: stale bitmap clusters are leaks (${theirs.leaks})`);
	tt.equal(ours.leaks.length, theirs.leaks, 'dmu check counts the same leaks');
	await plugin.check(p, { repair: 'leaks' });
	await judged(tt, p, expected, 'bitmap image after repair');
});

t.test('backing chain through a dscow image (raw <- dscow <- qcow2), written and read back', async (tt) => {
	const { plugin: dscow } = await import('../../src/plugins/dscow/index.js');
	const raw = join(dir, 'ds-base.raw');
	const mid = join(dir, 'ds-mid.dscow');
	const top = join(dir, 'ds-top.qcow2');
	await qemuCreate(raw, 'raw', { size: 4 << 20 });
	await qemuIo(raw, ['write -P 0x71 0 4M'], 'raw');
	await dscow.create(mid, { base: raw, baseFormat: 'raw', blockSize: 16384 });
	const expected = await readFile(raw);
	const d = await BlockEngine.open(dscow, mid);
	const patch1 = Buffer.alloc(50_000, 0x72);
	await d.write(1_000_000, patch1);
	patch1.copy(expected, 1_000_000);
	await d.close();
	await plugin.create(top, { base: mid, baseFormat: 'dscow', blockSize: 4096 });
	await randomWrites(top, expected, 11, 60, 40_000);
	const e = await BlockEngine.open(plugin, top, { readOnly: true });
	tt.equal(e.image.devices.length, 3, 'qcow2 file, dscow file, raw base');
	const got = await e.read(0, expected.length);
	await e.close();
	tt.equal(got.findIndex((b, i) => b !== expected[i]), -1, 'every byte as written');
	tt.same((await plugin.check(top)).corruptions, [], 'dmu check: no corruption');
});

t.test('corrupt metadata met while writing marks the image corrupt; check -r all clears it', async (tt) => {
	const p = join(dir, 'markcorrupt.qcow2');
	await qemuCreate(p, 'qcow2', { size: 4 << 20, options: { cluster_size: 65536 } });
	await qemuIo(p, ['write -P 0x31 0 64k', 'write -P 0x32 2M 64k']);
	// The only L1 entry now points far past the end of the file.
	const l1 = 3 * 65536; // qemu-img layout: header, refcount table, refcount block, L1
	const bad = Buffer.alloc(8);
	bad.writeBigUInt64BE((1n << 63n) | (1n << 40n));
	await patch(p, l1, bad);
	const img = await plugin.open(p);
	const d = await img.map({ block: 1n, write: true, wholeBlock: true, roFault: false });
	tt.same(d, { kind: 'error', errno: 5 }, 'write over a bad L2 pointer fails with EIO');
	await img.close();
	tt.equal((await plugin.info(p)).details.corrupt, true, 'corrupt bit set');
	await tt.rejects(plugin.open(p), { code: 'DMU_ERR_BAD_IMAGE', message: /marked corrupt/ }, 'read-write open refused');
	await (await plugin.open(p, { readOnly: true })).close();
	tt.pass('read-only open still works');
	await patch(p, l1, Buffer.alloc(8));
	const r = await plugin.check(p, { repair: 'all' });
	tt.ok(r.repaired.some((x) => /corrupt/.test(x)), 'repair clears the corrupt bit');
	tt.equal((await qemuCheck(p)).corruptions, 0, 'qemu-img check: no corruption');
	tt.equal((await plugin.info(p)).details.corrupt, false, 'corrupt bit clear');
});
