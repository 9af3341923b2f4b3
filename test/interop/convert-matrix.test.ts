/**
 * `dmu convert` end to end (the real CLI): one source with data, holes and
 * zeros converted to every output format; qemu-img checks each result
 * (where it can check that format) and compares it with the source.
 * Also: backing chains flattened, -B keeping a backing file, sparseness,
 * errors as one line.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import t from 'tap';
import { convert } from '../../src/convert/convert.js';
import { loadPlugin } from '../../src/plugins/registry.js';
import { dmuRaw, firstDiff, qemuImg, qemuImgStatus, qemuIo, qemuRaw, withTmp } from './convert-support.js';

const DMU = join(process.cwd(), 'dist/src/cli/dmu.js');
const dmu = (...args: string[]) => execa('node', [DMU, ...args], { reject: false, timeout: 120_000 });

const QEMU_NAME: Record<string, string> = { raw: 'raw', vhd: 'vpc', vmdk: 'vmdk', qcow: 'qcow', qcow2: 'qcow2' };
const CHECKABLE = new Set(['vmdk', 'qcow2']);

/** Formats whose plugins exist in this tree (qcow2 and dscow come from other parts). */
async function available(name: string): Promise<boolean> {
	return loadPlugin(name).then(
		() => true,
		() => false,
	);
}

const OUTPUTS: Array<{ fmt: string; opts?: string }> = [
	{ fmt: 'raw' },
	{ fmt: 'vhd', opts: 'subformat=dynamic' },
	{ fmt: 'vhd', opts: 'subformat=fixed' },
	{ fmt: 'vmdk' },
	{ fmt: 'vmdk', opts: 'subformat=monolithicFlat' },
	{ fmt: 'qcow' },
	{ fmt: 'qcow2' },
	{ fmt: 'dscow' },
];

t.test('convert a raw disk to every format', (t) =>
	withTmp(async (dir) => {
		const src = join(dir, 'src.raw');
		await qemuImg('create', '-f', 'raw', src, '6M');
		await qemuIo('raw', src, ['write -P 0x11 0 100k', 'write -P 0x22 3M 1M', 'write -P 0x33 6288384 3072']);
		const want = await qemuRaw('raw', src, dir);
		for (const { fmt, opts } of OUTPUTS) {
			if (!(await available(fmt))) {
				t.comment(`${fmt}: plugin not in this tree, skipped`);
				continue;
			}
			const dst = join(dir, `out-${fmt}-${(opts ?? '').replace(/\W/g, '')}.img`);
			// In-process (a node start per format costs more than the work);
			// the CLI itself is run below and in the other tests.
			const [k, v] = (opts ?? '=').split('=') as [string, string];
			const stats = await convert({ src, dst, dstFormat: fmt, ...(opts ? { options: { [k]: v } } : {}) });
			t.ok(stats.written > 0n && stats.written + stats.skipped === stats.size, `${fmt} ${opts ?? ''}: ${stats.written} bytes written, ${stats.skipped} skipped`);
			const q = QEMU_NAME[fmt];
			if (q && CHECKABLE.has(fmt)) {
				const chk = await qemuImgStatus('check', '-f', q, dst);
				t.equal(chk.code, 0, `${fmt}: qemu-img check ${chk.out.trim()}`);
			}
			if (q) {
				const cmp = await qemuImgStatus('compare', '-f', 'raw', '-F', q, src, dst);
				t.equal(cmp.code, 0, `${fmt} ${opts ?? ''}: qemu-img compare ${cmp.out.trim()}`);
			}
			const back = await dmuRaw(fmt, dst);
			t.equal(firstDiff(back.subarray(0, want.length), want), -1, `${fmt} ${opts ?? ''}: dmu reads the source's bytes`);
			t.ok(back.subarray(want.length).every((x) => x === 0), `${fmt}: any rounding tail reads zeros`);
		}
	}),
);

// A raw file need not be whole sectors (an image cut short, a download).
// qemu-img pads it to the next sector; dmu convert once dropped the tail.
t.test('a raw source with a partial last sector keeps every byte', (t) =>
	withTmp(async (dir) => {
		const src = join(dir, 'odd.raw');
		const bytes = Buffer.alloc(70_000);
		for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + 3) & 0xff;
		await writeFile(src, bytes);
		for (const fmt of ['raw', 'qcow2', 'vmdk']) {
			const dst = join(dir, `odd-out.${fmt}`);
			const stats = await convert({ src, dst, dstFormat: fmt });
			t.equal(stats.size, 70_144n, `${fmt}: the disk ends at the next sector boundary, as qemu-img sees the file`);
			const cmp = await qemuImgStatus('compare', '-f', 'raw', '-F', fmt, src, dst);
			t.equal(cmp.code, 0, `${fmt}: qemu-img compare ${cmp.out.trim()}`);
			const back = await dmuRaw(fmt, dst);
			t.equal(firstDiff(back.subarray(0, bytes.length), bytes), -1, `${fmt}: the last 368 bytes are there`);
			t.ok(back.subarray(bytes.length).every((x) => x === 0), `${fmt}: padded with zeros`);
		}
	}),
);

t.test('sparse: zero blocks are not allocated', (t) =>
	withTmp(async (dir) => {
		const src = join(dir, 'src.raw');
		await qemuImg('create', '-f', 'raw', src, '48M');
		await qemuIo('raw', src, ['write -P 0x44 1M 64k', 'write -z 2M 4M', 'write -P 0x45 40M 128k']);
		const dst = join(dir, 'd.vmdk');
		const r = await dmu('convert', '-O', 'vmdk', '-p', src, dst);
		t.equal(r.exitCode, 0, 'the CLI converts');
		t.equal(r.stderr, '', 'no progress bar without a terminal');
		const info = await (await loadPlugin('vmdk')).info(dst);
		t.equal(info.allocatedBlocks, 3n, 'three 64 KiB grains hold data');
		t.equal((await qemuImgStatus('compare', '-f', 'raw', '-F', 'vmdk', src, dst)).code, 0);
	}),
);

t.test('raw onto a block device that held data: holes and zeros read zero', (t) =>
	withTmp(async (dir) => {
		const src = join(dir, 'src.qcow2');
		await qemuImg('create', '-f', 'qcow2', src, '8M');
		await qemuIo('qcow2', src, ['write -P 0x46 1M 64k', 'write -z 2M 1M']);
		const backing = join(dir, 'dev.img');
		await execa('truncate', ['-s', '8M', backing]);
		const loop = await execa('losetup', ['-f', '--show', backing], { reject: false });
		if (loop.exitCode !== 0) return void t.comment(`skipped: no loop device here (${loop.stderr.trim()})`);
		const dev = loop.stdout.trim();
		t.teardown(() => execa('losetup', ['-d', dev], { reject: false }));
		await execa('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', 'count=8', 'oflag=direct', 'status=none']);
		const r = await dmu('convert', '-f', 'qcow2', '-O', 'raw', src, dev);
		t.equal(r.exitCode, 0, `converts onto ${dev}: ${r.stderr.trim()}`);
		const want = await qemuRaw('qcow2', src, dir);
		const got = (await execa('head', ['-c', String(want.length), dev], { encoding: 'buffer' })).stdout;
		t.equal(firstDiff(Buffer.from(got), want), -1, 'the device reads as the source, old data gone');
	}),
);

t.test('backing chains: flattened by default, kept with -B', (t) =>
	withTmp(async (dir) => {
		const base = join(dir, 'base.raw');
		await qemuImg('create', '-f', 'raw', base, '8M');
		await qemuIo('raw', base, ['write -P 0x5a 0 8M']);
		const top = join(dir, 'top.qcow');
		await qemuImg('create', '-f', 'qcow', '-o', 'cluster_size=4096', '-b', 'base.raw', '-F', 'raw', top).catch(() =>
			qemuImg('create', '-f', 'qcow', '-b', 'base.raw', '-F', 'raw', top),
		);
		await qemuIo('qcow', top, ['write -P 0x61 1M 64k', 'write -z 3M 64k']);
		const want = await qemuRaw('qcow', top, dir);

		const flat = join(dir, 'flat.vhd');
		t.equal((await dmu('convert', '-O', 'vhd', top, flat)).exitCode, 0);
		t.equal(firstDiff((await qemuRaw('vpc', flat, dir)).subarray(0, want.length), want), -1, 'flattened: qemu reads the chain');
		t.equal((await (await loadPlugin('vhd')).info(flat)).backing, undefined, 'no backing file');

		const delta = join(dir, 'delta.qcow');
		const r = await dmu('convert', '-O', 'qcow', '-B', base, '-F', 'raw', top, delta);
		t.equal(r.exitCode, 0, r.stderr);
		const info = await (await loadPlugin('qcow')).info(delta);
		t.equal(info.backing?.path, base, 'delta keeps the backing file');
		t.ok(info.allocatedBlocks <= 32n, `only differing clusters written (${info.allocatedBlocks})`);
		t.equal(firstDiff(await qemuRaw('qcow', delta, dir), want), -1, 'qemu reads delta + base = top');
	}),
);

t.test('convert errors are one clear line', (t) =>
	withTmp(async (dir) => {
		const r = await dmu('convert', '-O', 'vhd', join(dir, 'missing.img'), join(dir, 'x.vhd'));
		t.equal(r.exitCode, 1);
		t.match(r.stderr, /^dmu: cannot open .*missing\.img/);
		t.equal(r.stderr.trim().split('\n').length, 1);
		const r2 = await dmu('convert', '-O', 'nosuch', join(dir, 'missing.img'), join(dir, 'x'));
		t.equal(r2.exitCode, 1);
		t.equal(r2.stderr.trim().split('\n').length, 1, r2.stderr);
		const src = join(dir, 's.raw');
		await qemuImg('create', '-f', 'raw', src, '1M');
		const r3 = await dmu('convert', '-O', 'vhd', '-o', 'subformat=bogus', src, join(dir, 'y.vhd'));
		t.equal(r3.exitCode, 1);
		t.match(r3.stderr, /subformat/);
	}),
);

t.test('any to any: a round of conversions keeps the bytes', (t) =>
	withTmp(async (dir) => {
		const src = join(dir, 'start.raw');
		await qemuImg('create', '-f', 'raw', src, '5M');
		await qemuIo('raw', src, ['write -P 0x71 0 64k', 'write -P 0x72 1M 300k', 'write -P 0x73 5180416 4096']);
		const want = await qemuRaw('raw', src, dir);
		const chain = ['vhd', 'vmdk', 'qcow', 'qcow2', 'dscow', 'vhd', 'raw'];
		let prev = src;
		for (const [i, fmt] of chain.entries()) {
			if (!(await available(fmt))) continue;
			const dst = join(dir, `step${i}.${fmt}`);
			await convert({ src: prev, dst, dstFormat: fmt });
			const got = await dmuRaw(fmt, dst);
			t.equal(firstDiff(got.subarray(0, want.length), want), -1, `${prev.split('/').pop()} -> ${fmt}`);
			prev = dst;
		}
		const q = await qemuImgStatus('compare', '-f', 'raw', '-F', 'raw', src, prev);
		t.equal(q.code, 0, 'the last raw equals the first');
	}),
);
