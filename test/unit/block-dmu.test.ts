/**
 * tools/xen-scripts/block-dmu driven the way libxl drives it, against
 * Debian's real xenstored and Xen's own block-common.sh: failed adds report
 * through hotplug-error/hotplug-status, remove copes with adds that never
 * finished, and no params value can make the script run a command.
 * (The successful add needs the kernel target: see test/xen/.)
 */
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import t from 'tap';
import { startXenstored, type Xenstored } from '../support/xenstored.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const XEN_SCRIPTS = '/etc/xen/scripts';

let xs: Xenstored;
let dir: string;

t.before(async () => {
	xs = await startXenstored();
	dir = mkdtempSync(join(tmpdir(), 'dmu-block-'));
	// What installing does: block-dmu beside Xen's common scripts.
	for (const f of readdirSync(XEN_SCRIPTS)) if (f.endsWith('.sh')) symlinkSync(join(XEN_SCRIPTS, f), join(dir, f));
	copyFileSync(join(repo, 'tools/xen-scripts/block-dmu'), join(dir, 'block-dmu'));
	writeFileSync(join(dir, 'dmu'), `#!/bin/sh\nexec "${process.execPath}" "${join(repo, 'dist/bin/dmu.mjs')}" "$@"\n`);
	chmodSync(join(dir, 'dmu'), 0o755);
});
t.teardown(async () => {
	await xs?.stop();
	if (dir) rmSync(dir, { recursive: true, force: true });
});

const env = (extra: Record<string, string> = {}) => ({
	XENSTORED_PATH: xs.socketPath,
	DMU: join(dir, 'dmu'),
	DMU_RUN_DIR: join(dir, 'run'),
	DMU_LOG_DIR: join(dir, 'log'),
	PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
	...extra,
});

async function xsWrite(path: string, value: string): Promise<void> {
	await execa('xenstore-write', ['--', path, value], { env: env() });
}
async function xsRead(path: string): Promise<string | undefined> {
	const r = await execa('xenstore-read', [path], { env: env(), reject: false });
	return r.exitCode === 0 ? r.stdout : undefined;
}

let nextDevid = 51712;
/** The nodes libxl writes before it runs the script; returns XENBUS_PATH. */
async function backend(params: string, mode = 'w'): Promise<string> {
	const rel = `backend/vbd/7/${nextDevid++}`;
	const abs = `/local/domain/0/${rel}`;
	await xsWrite(`${abs}/params`, params);
	await xsWrite(`${abs}/mode`, mode);
	await xsWrite(`${abs}/type`, 'phy');
	await xsWrite(`${abs}/state`, '2');
	return rel;
}

const hotplug = (cmd: 'add' | 'remove', xenbusPath: string) =>
	execa('bash', [join(dir, 'block-dmu'), cmd], {
		env: env({ XENBUS_PATH: xenbusPath, XENBUS_TYPE: 'vbd', XENBUS_BASE_PATH: 'backend' }),
		reject: false,
		stdin: 'ignore',
		timeout: 40_000, // libxl's own hotplug timeout
	});

t.test('a bad spec fails the add with our message in hotplug-error', async (t) => {
	const p = await backend('qcow2');
	const r = await hotplug('add', p);
	t.equal(r.exitCode, 1);
	t.equal(await xsRead(`/local/domain/0/${p}/hotplug-status`), 'error');
	t.match(await xsRead(`/local/domain/0/${p}/hotplug-error`), /bad disk spec "qcow2": no image path/);
	t.equal(await xsRead(`/local/domain/0/${p}/physical-device`), undefined, 'nothing published');
});

t.test('a missing image fails the add, leaves no state after remove', async (t) => {
	const p = await backend(`dscow:${dir}/missing.dscow:${dir}/missing-base`);
	const r = await hotplug('add', p);
	t.equal(r.exitCode, 1);
	t.equal(await xsRead(`/local/domain/0/${p}/hotplug-status`), 'error');
	const why = (await xsRead(`/local/domain/0/${p}/hotplug-error`)) ?? '';
	t.match(why, /cannot attach dmu-xen-7-\d+/);
	const rm = await hotplug('remove', p);
	t.equal(rm.exitCode, 0, rm.stderr);
	t.notOk(existsSync(join(dir, 'run', 'xen', p.split('/').slice(-2).join('-'))), 'state file removed');
});

t.test('remove without any add succeeds', async (t) => {
	const r = await hotplug('remove', 'backend/vbd/7/99999');
	t.equal(r.exitCode, 0, r.stderr);
});

t.test('no params value runs a command', async (t) => {
	const marker = join(dir, 'pwned');
	const hostile = [
		`dscow:/tmp/a$(touch ${marker}):/b`,
		`dscow:/tmp/a\`touch ${marker}\`:/b`,
		`dscow:/tmp/a;touch ${marker}:/b`,
		`dscow:/tmp/a' ; touch ${marker} ; echo ':/b`,
		`dscow:/tmp/a" ; touch ${marker} ; echo ":/b`,
		`dscow:/tmp/a\ntouch ${marker}:/b`,
		`dscow:/tmp/a b c:/d e f`,
		`--help`,
		`-n x dscow:/a`,
	];
	for (const params of hostile) {
		const p = await backend(params);
		const r = await hotplug('add', p);
		t.equal(r.exitCode, 1, `add fails: ${JSON.stringify(params)}`);
		t.equal(await xsRead(`/local/domain/0/${p}/hotplug-status`), 'error');
		t.notOk(existsSync(marker), `no command ran: ${JSON.stringify(params)}`);
		await hotplug('remove', p);
	}
});

t.test('an unexpected XENBUS_PATH is refused', async (t) => {
	const r = await hotplug('add', 'backend/vbd/7/../../x');
	t.equal(r.exitCode, 1);
});
