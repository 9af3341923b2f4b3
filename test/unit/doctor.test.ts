import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const cli = fileURLToPath(new URL('../../src/cli/dmu.js', import.meta.url));

function runDoctor(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number; stdout: string; stderr: string }> {
	return new Promise((resolve) => {
		execFile(process.execPath, [cli, 'doctor', ...args], { env }, (err, stdout, stderr) => {
			resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
		});
	});
}

t.test('doctor --json reports each check and an exit status that matches', async (t) => {
	const r = await runDoctor(['--json']);
	const report = JSON.parse(r.stdout) as { ready: boolean; checks: Array<{ id: string; status: string; required: boolean; fix?: string }> };
	const ids = report.checks.map((c) => c.id);
	for (const id of ['device-mapper', 'dm-userspace', 'loop', 'dmsetup', 'qemu-img', 'xenstore', 'xen']) t.ok(ids.includes(id), `checks ${id}`);
	const ready = report.checks.every((c) => !c.required || c.status === 'ok');
	t.equal(report.ready, ready, 'ready is derived from the required checks');
	t.equal(r.code, ready ? 0 : 1, 'exit status follows readiness');
	for (const c of report.checks) if (c.status !== 'ok') t.ok(c.fix, `${c.id} says how to fix it`);
});

t.test('doctor finds qemu-img exactly when it is on PATH', async (t) => {
	const withTool = await runDoctor(['--json']);
	const found = JSON.parse(withTool.stdout).checks.find((c: { id: string }) => c.id === 'qemu-img');
	t.equal(found.status === 'ok', existsSync('/usr/bin/qemu-img'));
	const without = await runDoctor(['--json'], { ...process.env, PATH: '/nonexistent' });
	const missing = JSON.parse(without.stdout).checks.find((c: { id: string }) => c.id === 'qemu-img');
	t.equal(missing.status, 'warn');
	t.match(missing.fix, /apt-get install qemu-utils/);
});

t.test('doctor sees a xenstore socket named by XENSTORED_PATH', async (t) => {
	const dir = mkdtempSync(join(tmpdir(), 'dmu-doctor-'));
	t.teardown(() => rmSync(dir, { recursive: true, force: true }));
	const net = await import('node:net');
	const sock = `${dir}/socket`;
	const server = net.createServer().listen(sock);
	await new Promise((r) => server.once('listening', r));
	const r = await runDoctor(['--json'], { ...process.env, XENSTORED_PATH: sock });
	server.close();
	const xs = JSON.parse(r.stdout).checks.find((c: { id: string }) => c.id === 'xenstore');
	t.equal(xs.status, 'ok');
	t.equal(xs.detail, sock);
});

t.test('human output names what is missing', async (t) => {
	const r = await runDoctor([]);
	t.match(r.stdout, /dmsetup/);
	t.match(r.stdout, /dmu (can|cannot) attach disks on this host/);
});
