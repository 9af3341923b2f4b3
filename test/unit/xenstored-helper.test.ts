/**
 * The test daemon helper itself: a real xenstored starts, serves reads,
 * writes and watches to Xen's own CLI tools (xenstore-utils), and stops.
 * Kept independent of src/xenstore so a client bug cannot hide a helper bug.
 */
import { existsSync } from 'node:fs';
import { execa } from 'execa';
import t from 'tap';
import { startXenstored } from '../support/xenstored.js';

const alive = (pid: number) => {
	try {
		process.kill(pid, 0);
		return true;
	} catch {
		return false;
	}
};

t.test('read, write and watch through the real daemon', async (t) => {
	const xs = await startXenstored();
	t.teardown(xs.stop);
	const env = { XENSTORED_PATH: xs.socketPath };
	const cli = (cmd: string, ...args: string[]) => execa(cmd, args, { env, timeout: 10_000 });

	t.ok(alive(xs.pid), 'daemon runs');
	await cli('xenstore-write', '/dmu-test/a', 'hello', '/dmu-test/b', 'two words');
	t.equal((await cli('xenstore-read', '/dmu-test/a')).stdout, 'hello');
	t.equal((await cli('xenstore-read', '/dmu-test/b')).stdout, 'two words');

	const missing = await cli('xenstore-read', '/dmu-test/nope').catch((e: { exitCode: number }) => e);
	t.not(missing.exitCode, 0, 'reading a missing node fails');

	// xenstore-watch reports the watched path once at registration, then
	// one line per change; -n 2 exits after the registration event and
	// the event of our write.
	const watch = cli('xenstore-watch', '-n', '2', '/dmu-test/w');
	const lines: string[] = [];
	watch.stdout?.setEncoding('utf8');
	await new Promise<void>((resolve, reject) => {
		watch.stdout?.on('data', (s: string) => {
			lines.push(...s.split('\n').filter(Boolean));
			if (lines.length >= 1) resolve();
		});
		watch.catch(reject);
	});
	await cli('xenstore-write', '/dmu-test/w/child', 'x');
	await watch;
	t.same(lines, ['/dmu-test/w', '/dmu-test/w/child'], 'watch fires on registration and on write');
});

t.test('two daemons are isolated; stop kills by PID and cleans up', async (t) => {
	const [a, b] = await Promise.all([startXenstored(), startXenstored()]);
	t.not(a.socketPath, b.socketPath);
	await execa('xenstore-write', ['/only-in-a', '1'], { env: { XENSTORED_PATH: a.socketPath } });
	const inB = await execa('xenstore-read', ['/only-in-a'], {
		env: { XENSTORED_PATH: b.socketPath },
		reject: false,
	});
	t.not(inB.exitCode, 0, 'b does not see a write to a');
	await a.stop();
	await b.stop();
	t.notOk(alive(a.pid), 'a is gone');
	t.notOk(alive(b.pid), 'b is gone');
	t.notOk(existsSync(a.rundir), 'run directory removed');
	await a.stop(); // idempotent
});
