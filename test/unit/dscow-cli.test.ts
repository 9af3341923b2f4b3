/**
 * The dscow command lines as a user runs them: dscow_tool's five lines,
 * `dmu create/info/check` with qemu-img-style exit codes, one-line errors.
 */
import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import t from 'tap';
import { plugin } from '../../src/plugins/dscow/index.js';
import { BlockEngine } from '../../src/plugins/engine.js';

const cli = (name: string) => fileURLToPath(new URL(`../../src/cli/${name}.js`, import.meta.url));
const run = (name: string, ...args: string[]) => execa('node', [cli(name), ...args], { reject: false, timeout: 30_000 });

t.test('dscow_tool -c prints exactly the five lines; -i shows the header', async (t) => {
	const dir = await mkdtemp(join(tmpdir(), 'dscow-cli-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const base = join(dir, 'base.img');
	await writeFile(base, '');
	await truncate(base, 1 << 30);
	const img = join(dir, 'a.dscow');
	const r = await run('dscow_tool', '-c', img, base);
	t.equal(r.exitCode, 0, r.stderr);
	const lines = r.stdout.split('\n');
	t.equal(lines.length, 5, 'five lines');
	t.strictSame(
		lines.map((l) => l.split(/:\s+/)),
		[
			['Size', '1073741824'],
			['First block', '65536'],
			['Block size', '65536'],
			['Blocks', '16384'],
			['Bitmap count', '512'],
		],
	);
	const i = await run('dscow_tool', '-i', img);
	t.equal(i.exitCode, 0);
	t.match(i.stdout, /^Size:\s+1073741824$/m);
	t.match(i.stdout, new RegExp(`^Base:\\s+${base}$`, 'm'));

	const b1m = await run('dscow_tool', '-c', join(dir, 'b.dscow'), base, '-b', '1M');
	t.match(b1m.stdout, /^Block size:\s+1048576$/m);
	t.match(b1m.stdout, /^Blocks:\s+1024$/m);

	const again = await run('dscow_tool', '-c', img, base);
	t.equal(again.exitCode, 1);
	t.equal(again.stderr.trim(), `dscow_tool: cannot create ${img}: it already exists`);
	const badBs = await run('dscow_tool', '-c', join(dir, 'c.dscow'), base, '-b', '3000');
	t.equal(badBs.exitCode, 1);
	t.match(badBs.stderr.trim(), /^dscow_tool: dscow block size must be a power of two/);
	t.equal(badBs.stderr.trim().split('\n').length, 1, 'one line');
	const noBase = await run('dscow_tool', '-c', join(dir, 'd.dscow'), join(dir, 'nope'));
	t.match(noBase.stderr.trim(), /^dscow_tool: base .*nope: not found$/);
});

t.test('dmu create / info --output json / check exit codes', async (t) => {
	const dir = await mkdtemp(join(tmpdir(), 'dscow-cli-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const base = join(dir, 'base.img');
	await writeFile(base, Buffer.alloc(2 << 20, 1));
	const img = join(dir, 'x.dscow');
	const c = await run('dmu', 'create', '-f', 'dscow', '-b', base, img);
	t.equal(c.exitCode, 0, c.stderr);
	const info = await run('dmu', 'info', '--output', 'json', img);
	t.equal(info.exitCode, 0, info.stderr);
	const j = JSON.parse(info.stdout);
	t.match(j, { format: 'dscow', 'virtual-size': 2 << 20, 'block-size': 65536, 'backing-filename': base, dirty: false });
	t.equal((await run('dmu', 'check', img)).exitCode, 0, 'clean: 0');

	// Leak: data written, never committed.
	const e = await BlockEngine.open(plugin, img);
	await e.write(0, Buffer.alloc(4096, 9));
	const leak = await run('dmu', 'check', img);
	t.equal(leak.exitCode, 3, 'leaks: 3');
	t.match(leak.stdout, /Leaked: block 0/);
	t.equal((await run('dmu', 'check', '-r', 'leaks', img)).exitCode, 0, 'repaired: 0');

	// Corruption: a stray bitmap bit past the last block (32 blocks = one full word, so use
	// a header over a 33-block image instead), or a damaged header.
	const fh = await open(img, 'r+');
	await fh.write(Buffer.from([0xff]), 0, 1, 200);
	await fh.close();
	const bad = await run('dmu', 'check', '--output', 'json', img);
	t.equal(bad.exitCode, 2, 'corrupt: 2');
	t.match(JSON.parse(bad.stdout).corruptions, [/checksum/]);
	const open1 = await run('dmu', 'info', img);
	t.equal(open1.exitCode, 1);
	t.match(open1.stderr, /^dmu: .*not a usable dscow image: header checksum mismatch/);
	const nonsense = await run('dmu', 'create', '-f', 'dscow', join(dir, 'y.dscow'));
	t.match(nonsense.stderr.trim(), /^dmu: dscow: give a base or a size$/);
});
