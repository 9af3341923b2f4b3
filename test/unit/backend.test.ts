/**
 * The backend daemon against Debian's real xenstored, driven through the
 * nodes libxl writes: requests relayed over its socket, and Xen disks whose
 * vbd vanished (remove hook never ran) torn down on the watch. The workers
 * here are stand-in processes because the host has no device-mapper; the
 * real cowd path is covered in test/vm and test/xen.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import t from 'tap';
import { startXenstored, type Xenstored } from '../support/xenstored.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const dmu = join(repo, 'dist/bin/dmu.mjs');

let xs: Xenstored;
let dir: string;
let backend: ChildProcess;
let backendLog = '';

const env = () => ({ ...process.env, XENSTORED_PATH: xs.socketPath, DMU_RUN_DIR: join(dir, 'run'), DMU_LOG_DIR: join(dir, 'log') });
const waitFor = async (what: string, cond: () => boolean | Promise<boolean>, ms = 15_000) => {
	const end = Date.now() + ms;
	while (!(await cond())) {
		if (Date.now() > end) throw new Error(`timed out waiting for ${what}; backend log:\n${backendLog}`);
		await new Promise((r) => setTimeout(r, 100));
	}
};

t.before(async () => {
	xs = await startXenstored();
	dir = mkdtempSync(join(tmpdir(), 'dmu-backend-'));
	mkdirSync(join(dir, 'run'));
	backend = spawn(process.execPath, [dmu, 'backend', '--log-level', 'debug'], { env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
	backend.stdout!.on('data', (b) => (backendLog += b));
	backend.stderr!.on('data', (b) => (backendLog += b));
	await waitFor('backend socket', () => existsSync(join(dir, 'run', 'backend.sock')));
	await waitFor('backend start log', () => backendLog.includes('backend started'));
});

t.teardown(async () => {
	backend?.kill('SIGTERM');
	await xs?.stop();
	if (dir) rmSync(dir, { recursive: true, force: true });
});

t.test('attach through the backend relays its error as one line', async (t) => {
	const r = await execa(process.execPath, [dmu, 'attach', '-n', 'relay-test', `dscow:${dir}/none.dscow:${dir}/none.base`], { env: env(), reject: false });
	t.not(r.exitCode, 0);
	t.match(r.stderr, /^dmu: cannot attach relay-test: /);
	t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
	t.match(backendLog, /"disk":"relay-test"|relay-test/, 'the backend handled it');
});

t.test('a Xen disk whose vbd vanished is torn down on the watch', async (t) => {
	// A worker the backend knows (pid and spec files), for a vbd that exists.
	const vbd = '/local/domain/0/backend/vbd/3/51712';
	await execa('xenstore-write', [`${vbd}/params`, 'dscow:/a:/b'], { env: env() });
	const worker = spawn('sleep', ['600'], { stdio: 'ignore' });
	const name = 'dmu-xen-3-51712';
	writeFileSync(join(dir, 'run', `${name}.pid`), `${worker.pid}\n`);
	writeFileSync(join(dir, 'run', `${name}.spec`), 'dscow:/a:/b\n');
	const exited = new Promise((r) => worker.once('exit', r));
	// A write elsewhere fires the watch: the vbd still exists, nothing happens.
	await execa('xenstore-write', ['/local/domain/0/backend/vbd/3/51713/params', 'x'], { env: env() });
	await new Promise((r) => setTimeout(r, 1000));
	t.equal(worker.exitCode, null, 'worker of a live vbd left alone');
	// libxl deletes the backend directory: the worker is stopped.
	await execa('xenstore-rm', [vbd], { env: env() });
	await exited;
	t.pass('worker stopped');
	await waitFor('state files removed', () => !existsSync(join(dir, 'run', `${name}.pid`)));
	t.match(backendLog, /backend\/vbd\/3\/51712 is gone/);
});

t.test('list shows the recorded workers', async (t) => {
	const worker = spawn('sleep', ['600'], { stdio: 'ignore' });
	t.teardown(() => worker.kill());
	writeFileSync(join(dir, 'run', 'manual.pid'), `${worker.pid}\n`);
	writeFileSync(join(dir, 'run', 'manual.spec'), 'raw:/x\n');
	const { askBackend } = await import('../../src/backend/backend-protocol.js');
	process.env.DMU_RUN_DIR = join(dir, 'run');
	const reply = await askBackend({ op: 'list' });
	t.same(reply?.workers?.find((w) => w.name === 'manual'), { name: 'manual', pid: worker.pid, spec: 'raw:/x' });
});
