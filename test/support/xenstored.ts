/**
 * A real Xen 4.17 C xenstored for host tests, one private daemon per test.
 *
 * The host has no hypervisor, so the daemon runs with test/support/fakexen.c
 * preloaded (see the comment at its top). The shim is compiled on demand into
 * .cache/xenstored/fakexen.so and rebuilt when the C file is newer. Each
 * daemon gets its own run directory and socket (XENSTORED_RUNDIR,
 * XENSTORED_PATH), stays a child of the test process and is stopped by PID.
 *
 * Limits of this setup (see /work/shared/xenstored-host/README.md): socket
 * clients are always dom0, so permission enforcement cannot be tested;
 * /local/domain/0 is not created.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Where Debian's xen-utils-4.17 installs the C daemon. */
export const XENSTORED_BIN = '/usr/lib/xen-4.17/bin/xenstored';

export interface Xenstored {
	/** Unix socket the daemon listens on; give it to clients as XENSTORED_PATH. */
	socketPath: string;
	pid: number;
	/** Private run directory (socket, daemon log). Removed by stop(). */
	rundir: string;
	/** SIGTERM, wait for exit (SIGKILL after 2 s), remove the run directory. */
	stop(): Promise<void>;
}

export interface StartOptions {
	/** Domids that "exist" besides dom0 (FAKEXEN_DOMAINS); default all. */
	domains?: number[];
	/** Extra xenstored arguments, e.g. ['--verbose']. */
	args?: string[];
}

/** The checkout root: the nearest ancestor holding test/support/fakexen.c. */
function repoRoot(): string {
	let dir = dirname(fileURLToPath(import.meta.url));
	for (;;) {
		if (existsSync(join(dir, 'test/support/fakexen.c'))) return dir;
		const up = dirname(dir);
		if (up === dir) throw new Error('cannot find test/support/fakexen.c above this module');
		dir = up;
	}
}

const mtime = async (path: string): Promise<number> => {
	try {
		return (await stat(path)).mtimeMs;
	} catch {
		return -1;
	}
};

let shimBuild: Promise<string> | undefined;

/**
 * Path of the compiled shim, building it first if it is missing or older
 * than its source. Built to a temporary name and renamed, so a concurrent
 * test process never preloads a half-written library.
 */
export function buildShim(): Promise<string> {
	shimBuild ??= (async () => {
		const root = repoRoot();
		const src = join(root, 'test/support/fakexen.c');
		const outDir = join(root, '.cache/xenstored');
		const out = join(outDir, 'fakexen.so');
		if ((await mtime(out)) >= (await mtime(src))) return out;
		await mkdir(outDir, { recursive: true });
		const tmp = `${out}.${process.pid}.tmp`;
		await run('gcc', ['-shared', '-fPIC', '-O2', '-Wall', '-Wextra', '-o', tmp, src, '-ldl']);
		await rename(tmp, out);
		return out;
	})();
	shimBuild.catch(() => {
		shimBuild = undefined;
	});
	return shimBuild;
}

/**
 * Resolves once the daemon answers a request on its socket. We speak the
 * wire protocol by hand (one DIRECTORY "/" frame) so that this helper does
 * not depend on the client it is used to test.
 */
function probe(socketPath: string): Promise<boolean> {
	return new Promise((resolve) => {
		const sock = connect(socketPath);
		const done = (ok: boolean) => {
			sock.destroy();
			resolve(ok);
		};
		sock.on('error', () => done(false));
		sock.setTimeout(1000, () => done(false));
		sock.on('connect', () => {
			// struct xsd_sockmsg { u32 type; u32 req_id; u32 tx_id; u32 len; }
			const frame = Buffer.alloc(16 + 2);
			frame.writeUInt32LE(1, 0); // XS_DIRECTORY
			frame.writeUInt32LE(0x70726f62, 4); // req_id, echoed back
			frame.writeUInt32LE(2, 12);
			frame.write('/\0', 16, 'latin1');
			sock.write(frame);
		});
		let got = 0;
		sock.on('data', (chunk) => {
			got += chunk.length;
			if (got >= 16) done(true);
		});
	});
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Daemons not yet stopped; killed if the test process exits without stop(). */
const live = new Set<ChildProcess>();
process.on('exit', () => {
	for (const child of live) child.kill('SIGKILL');
});

function exited(child: ChildProcess): Promise<void> {
	if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
	return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** Starts a private xenstored and resolves once it answers requests. */
export async function startXenstored(opts: StartOptions = {}): Promise<Xenstored> {
	if (!existsSync(XENSTORED_BIN)) {
		throw new Error(`${XENSTORED_BIN} not found: install xen-utils-4.17 (.ci/install-deps)`);
	}
	const shim = await buildShim();
	const rundir = await mkdtemp(join(tmpdir(), 'dmu-xenstored-'));
	const socketPath = join(rundir, 'socket');
	const logPath = join(rundir, 'xenstored.log');
	const log = openSync(logPath, 'w');
	const env: NodeJS.ProcessEnv = {
		...process.env,
		XENSTORED_RUNDIR: rundir,
		XENSTORED_PATH: socketPath,
		LD_PRELOAD: shim,
		// Dies with us even if we are SIGKILLed (tap timeout): see fakexen.c.
		FAKEXEN_PARENT_PID: String(process.pid),
	};
	if (opts.domains) env.FAKEXEN_DOMAINS = opts.domains.join(',');
	const child = spawn(XENSTORED_BIN, ['--no-fork', ...(opts.args ?? [])], {
		env,
		stdio: ['ignore', log, log],
	});
	closeSync(log);
	// A test that forgets stop() must not hang on its daemon: the exit
	// handler below (or PDEATHSIG, see fakexen.c) ends it.
	child.unref();
	const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
	live.add(child);

	const stop = async () => {
		if (live.delete(child)) {
			child.kill('SIGTERM');
			const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
			await exited(child);
			clearTimeout(timer);
		}
		await rm(rundir, { recursive: true, force: true });
	};

	// Startup takes ~20 ms; allow 5 s for a loaded machine.
	const deadline = Date.now() + 5000;
	for (;;) {
		const failed = await Promise.race([spawnError, sleep(0).then(() => undefined)]);
		if (failed || child.exitCode !== null || child.signalCode !== null) {
			const text = existsSync(logPath) ? readFileSync(logPath, 'utf8').trim() : '';
			await stop();
			throw new Error(
				`xenstored exited during start-up (${failed?.message ?? child.exitCode ?? child.signalCode}): ${text}`,
			);
		}
		if (existsSync(socketPath) && (await probe(socketPath))) break;
		if (Date.now() > deadline) {
			await stop();
			throw new Error(`xenstored did not answer on ${socketPath} within 5 s`);
		}
		await sleep(10);
	}
	return { socketPath, pid: child.pid!, rundir, stop };
}
