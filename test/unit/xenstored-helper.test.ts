/**
 * The test daemon helper itself: a real xenstored starts, serves reads,
 * writes and watches to Xen's own CLI tools (xenstore-utils), and stops.
 * Kept independent of src/xenstore so a client bug cannot hide a helper bug.
 */
import { existsSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
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

t.test('a test process killed outright takes its daemon with it', async (t) => {
	// A child that starts a daemon, reports its PID, then dies by SIGKILL
	// (as on a tap timeout): no exit handler runs, only PDEATHSIG can help.
	const helper = new URL('../support/xenstored.js', import.meta.url).href;
	const script = `const m = await import(${JSON.stringify(helper)});
		const d = await m.startXenstored();
		process.stdout.write(d.pid + ' ' + d.rundir + '\\n', () => process.kill(process.pid, 'SIGKILL'));`;
	const child = await execa(process.execPath, ['--input-type=module', '-e', script], { reject: false });
	t.equal(child.signal, 'SIGKILL');
	const [pidText, rundir] = child.stdout.trim().split(' ');
	const pid = Number(pidText);
	if (rundir) t.teardown(() => rm(rundir, { recursive: true, force: true }));
	t.ok(pid > 0, 'daemon was started');
	const deadline = Date.now() + 5000;
	const state = () => {
		try {
			// "Z" (zombie, waiting for init to reap it) counts as gone.
			return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0];
		} catch {
			return 'gone';
		}
	};
	while (!['Z', 'gone'].includes(state() ?? '') && Date.now() < deadline) await sleep(20);
	t.ok(['Z', 'gone'].includes(state() ?? ''), `daemon ${pid} ended with its parent`);
});

t.test('a daemon that fails to start is reported with its log', async (t) => {
	// --help prints usage and exits 0 (an unknown option is ignored instead).
	const r = await startXenstored({ args: ['--help'] }).then(
		async (d) => {
			await d.stop();
			return new Error('started');
		},
		(e: Error) => e,
	);
	t.match(r.message, /^xenstored exited during start-up \(0\): .*Usage/s);
});
