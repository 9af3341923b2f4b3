/**
 * The /dev/xen/xenbus transport (fs read/write loop on a blocking fd). The
 * host has no xenbus device, so a child process gets a socketpair as fd 3
 * and we bridge it to a real xenstored: same code path, same daemon.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect as netConnect } from 'node:net';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { xenstoreFixture } from '../support/xenstore-client.js';

const child = fileURLToPath(new URL('../support/xenstore-fd-child.js', import.meta.url));

t.test('client over a blocking fd: ops, watch, transaction, pipelining, clean exit', async (t) => {
	const fx = await xenstoreFixture(t);
	const proc = spawn(process.execPath, [child], { stdio: ['ignore', 'pipe', 'inherit', 'pipe'] });
	const killer = setTimeout(() => proc.kill('SIGKILL'), 20_000);
	t.teardown(() => clearTimeout(killer));
	const fd3 = proc.stdio[3] as import('node:net').Socket;
	const up = netConnect(fx.daemon.socketPath);
	fd3.pipe(up);
	up.pipe(fd3);
	up.on('error', () => {});
	fd3.on('error', () => {});

	let stdout = '';
	proc.stdout!.setEncoding('utf8').on('data', (s: string) => {
		stdout += s;
	});
	const [code, signal] = (await once(proc, 'exit')) as [number | null, string | null];
	up.destroy();
	t.equal(signal, null, 'child exited by itself (close() released the blocked read)');
	t.equal(code, 0);
	const out = JSON.parse(stdout);
	t.equal(out.read, 'over fd');
	t.equal(out.enoent, 'ENOENT');
	t.same(out.events, [
		{ path: '/dev-test/w', token: 'tok' },
		{ path: '/dev-test/w/x', token: 'tok' },
	]);
	t.equal(out.tx, 'in tx');
	t.equal(out.pipelined, true, '1000 pipelined writes and reads matched');
});
