/**
 * The single-file programs in dist/bin/ (tools/build/bundle.ts) are what
 * package.json's "bin", block-dmu and the VM tests run: each must start and
 * answer --help, and `dmu attach` from the bundle must start the bundled
 * cowd (found beside it, not in the compiled tree).
 */
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import t from 'tap';
import { COWD_NODE_FLAGS } from '../../src/cowd/node-flags.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const bin = (name: string) => join(repo, 'dist/bin', `${name}.mjs`);

for (const name of ['dmu', 'cowd', 'dscow_tool', 'dmu-attach', 'dmu-detach']) {
	t.test(`${name}.mjs starts and prints its usage`, async (t) => {
		const r = await execa(process.execPath, [bin(name), '--help'], { reject: false });
		t.equal(r.exitCode, 0, r.stderr);
		t.match(r.stdout, /^Usage: /);
	});
}

t.test('cowd.mjs runs through its own #! line', async (t) => {
	// env -S splits "node --jitless": a plain #! line passes one argument.
	const r = await execa(bin('cowd'), ['--help'], { reject: false });
	t.equal(r.exitCode, 0, r.stderr);
	t.match(r.stdout, /^Usage: cowd/);
});

t.test("cowd.mjs's #! line passes the flags our launchers use", async (t) => {
	// The #! line cannot import COWD_NODE_FLAGS: the two copies must agree.
	const first = readFileSync(bin('cowd'), 'utf8').split('\n', 1)[0];
	t.equal(first, `#!/usr/bin/env -S node ${COWD_NODE_FLAGS.join(' ')}`);
});

t.test('dmu attach from the bundle spawns the bundled cowd', async (t) => {
	const dir = mkdtempSync(join(tmpdir(), 'dmu-bundle-'));
	t.teardown(() => rmSync(dir, { recursive: true, force: true }));
	const base = join(dir, 'base.img');
	writeFileSync(base, '');
	truncateSync(base, 1 << 20);
	await execa(process.execPath, [bin('dscow_tool'), '-c', join(dir, 'x.dscow'), base]);
	const env = { DMU_RUN_DIR: join(dir, 'run'), DMU_LOG_DIR: join(dir, 'log') };
	const r = await execa(process.execPath, [bin('dmu'), 'attach', '-n', 'b1', '--timeout', '20', `dscow:${join(dir, 'x.dscow')}:${base}`], { env, reject: false });
	const log = readFileSync(join(dir, 'log/b1.log'), 'utf8');
	t.notMatch(log, /Cannot find module|ERR_MODULE_NOT_FOUND/, 'cowd was found');
	// cowd runs as every launcher of ours starts it (src/cowd/node-flags.ts).
	const starting = log
		.split('\n')
		.filter((l) => l.startsWith('{')) // JSON log lines; its last words are plain text
		.map((l) => JSON.parse(l) as { msg?: string; jitless?: boolean })
		.find((l) => l.msg === 'starting');
	t.equal(starting?.jitless, true, 'cowd started without the JIT');
	if (r.exitCode === 0) {
		// A host with device-mapper and the module: the disk really attached.
		t.equal(r.stdout.trim(), '/dev/mapper/b1');
		await execa(process.execPath, [bin('dmu'), 'detach', 'b1'], { env });
	} else {
		// This sandbox: cowd itself ran and refused, in its own words.
		t.match(r.stderr, /^dmu: cannot attach b1: cowd: /);
	}
});
