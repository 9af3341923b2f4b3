/**
 * Workers: one cowd per disk, started detached so it outlives whoever
 * started it (the hotplug script, `dmu attach`, or a backend daemon that
 * may itself be restarted while guests run). startWorker waits until the
 * /dev/mapper node serves I/O; stopWorker sends SIGTERM (cowd commits and
 * removes the device) and waits, and serves once more a device whose cowd
 * died before it removes it.
 *
 * Run-state lives in /run/dmu (DMU_RUN_DIR): <name>.pid and <name>.spec, so
 * a detach finds its cowd even when xenstore has already forgotten the disk.
 * Each cowd logs to /var/log/dmu/<name>.log (DMU_LOG_DIR).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { DmuError } from '../errors.js';
import { formatTargetSpec, parseTargetSpec, type TargetSpec } from './target-spec.js';
import { COWD_NODE_FLAGS } from '../cowd/node-flags.js';

export const runDir = () => process.env.DMU_RUN_DIR ?? '/run/dmu';
export const logDir = () => process.env.DMU_LOG_DIR ?? '/var/log/dmu';
/**
 * cowd's entry point: its bundle beside this one when running from
 * dist/bin/ (see tools/build/bundle.ts), else the compiled tree.
 */
function cowdCli(): string {
	const bundled = fileURLToPath(new URL('./cowd.mjs', import.meta.url));
	return existsSync(bundled) ? bundled : fileURLToPath(new URL('../cli/cowd.js', import.meta.url));
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$/;

export function checkName(name: string): string {
	if (!NAME.test(name)) {
		throw new DmuError('DMU_ERR_BAD_NAME', `bad device name "${name}": use 1-48 of A-Z a-z 0-9 . _ - (starting with a letter or digit)`, 2);
	}
	return name;
}

/** A name for an image when the admin gives none: its file name, sanitised. */
export function defaultName(spec: TargetSpec): string {
	const base = spec.image.split('/').pop() ?? 'disk';
	return `dmu-${base.replace(/[^A-Za-z0-9._-]/g, '_')}`.slice(0, 48);
}

export const alive = (pid: number) => {
	try {
		process.kill(pid, 0);
		return true;
	} catch {
		return false;
	}
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function readPid(name: string): Promise<number | undefined> {
	const txt = await readFile(join(runDir(), `${name}.pid`), 'utf8').catch(() => undefined);
	const pid = txt ? Number.parseInt(txt, 10) : Number.NaN;
	return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

async function logTail(log: string): Promise<string> {
	const txt = await readFile(log, 'utf8').catch(() => '');
	// cowd logs JSON lines (pino); the last error's msg is what the admin needs.
	const lines = txt.trim().split('\n').filter(Boolean);
	for (const line of lines.reverse()) {
		try {
			const rec = JSON.parse(line) as { level?: number; msg?: string };
			if ((rec.level ?? 0) >= 50 && rec.msg) return rec.msg;
		} catch {
			if (line.trim()) return line.trim();
		}
	}
	return 'no log output';
}

export interface AttachOptions {
	name: string;
	readOnly?: boolean;
	/** Seconds to wait for the device to appear. */
	timeoutSec?: number;
}

/** Start cowd for `spec` and return /dev/mapper/<name> once it exists. */
export async function startWorker(spec: TargetSpec, opts: AttachOptions): Promise<string> {
	const name = checkName(opts.name);
	const dev = `/dev/mapper/${name}`;
	await mkdir(runDir(), { recursive: true });
	await mkdir(logDir(), { recursive: true });
	const running = await readPid(name);
	if (running && alive(running) && (await stat(dev).catch(() => undefined))) return dev; // attaching twice is a no-op
	const log = join(logDir(), `${name}.log`);
	const args = [cowdCli(), '-p', spec.format, name, spec.image, ...(spec.base ? [spec.base] : [])];
	if (opts.readOnly) args.push('--read-only');
	const logStart = (await stat(log).catch(() => undefined))?.size ?? 0;
	const fd = openSync(log, 'a');
	// A plain detached spawn: cowd must outlive this process (the hotplug
	// script exits as soon as the device is there).
	let child: ChildProcess;
	try {
		child = spawn(process.execPath, [...COWD_NODE_FLAGS, ...args], { detached: true, stdio: ['ignore', fd, fd] });
	} finally {
		closeSync(fd);
	}
	const pid = child.pid;
	if (!pid) throw new DmuError('DMU_ERR_ATTACH', `cannot start cowd for ${name}`);
	child.unref();
	await writeFile(join(runDir(), `${name}.pid`), `${pid}\n`);
	await writeFile(join(runDir(), `${name}.spec`), `${formatTargetSpec(spec)}\n`);
	// Ready when this cowd logs that it serves (or took over) the device: a
	// read of its log, no process start per poll. Under emulation, and in a
	// Xen dom0 within libxl's 40 s hotplug limit, process starts are what
	// costs.
	const deadline = Date.now() + (opts.timeoutSec ?? 30) * 1000;
	for (;;) {
		if (await loggedReady(log, logStart, pid)) return dev;
		if (!alive(pid)) {
			await rm(join(runDir(), `${name}.pid`), { force: true });
			throw new DmuError('DMU_ERR_ATTACH', `cannot attach ${name}: ${await logTail(log)} (log: ${log})`);
		}
		if (Date.now() > deadline) {
			process.kill(pid, 'SIGTERM');
			throw new DmuError('DMU_ERR_ATTACH', `cannot attach ${name}: ${dev} did not appear within ${Math.round(opts.timeoutSec ?? 30)} s (log: ${log})`);
		}
		await sleep(50);
	}
}

/** Has cowd `pid` logged, since byte `from` of its log, that it serves its disk? */
async function loggedReady(log: string, from: number, pid: number): Promise<boolean> {
	const text = await readFile(log).catch(() => Buffer.alloc(0));
	for (const line of text.subarray(from).toString('utf8').split('\n')) {
		if (!line.includes(`"pid":${pid},`)) continue;
		try {
			const rec = JSON.parse(line) as { pid?: number; msg?: string };
			if (rec.pid === pid && (rec.msg?.startsWith('serving ') || rec.msg === 'took over the running disk')) return true;
		} catch {
			// a line still being written
		}
	}
	return false;
}

/** SIGTERM `pid` (a cowd) and wait for it to exit. */
async function terminate(name: string, pid: number, timeoutSec: number): Promise<void> {
	process.kill(pid, 'SIGTERM');
	const deadline = Date.now() + timeoutSec * 1000;
	while (alive(pid)) {
		if (Date.now() > deadline) throw new DmuError('DMU_ERR_DETACH', `cowd for ${name} (pid ${pid}) did not stop within ${timeoutSec} s`);
		await sleep(100);
	}
}

/** Is device `name` there, read-only, open? undefined with no such device. */
async function dmState(name: string): Promise<{ readOnly: boolean; open: number } | undefined> {
	const info = await execa('dmsetup', ['info', '-c', '--noheadings', '--separator', ' ', '-o', 'attr,open', name], { reject: false });
	if (info.exitCode !== 0) return undefined;
	const [attr = '', open = '0'] = info.stdout.trim().split(/\s+/);
	return { readOnly: attr.includes('r'), open: Number(open) };
}

/** Stop the cowd serving `name` and wait for it; true if there was one. */
export async function stopWorker(name: string, opts: { timeoutSec?: number } = {}): Promise<boolean> {
	checkName(name);
	const timeoutSec = opts.timeoutSec ?? 30;
	const pid = await readPid(name);
	let found = false;
	if (pid && alive(pid)) {
		found = true;
		await terminate(name, pid, timeoutSec);
	}
	let state = await dmState(name);
	// A cowd that died leaves its device behind, and after it died the
	// kernel may have written blocks it allocated itself (copy-on-write
	// answers) that no cowd has recorded: removing the device now would
	// lose them. Serve it once more, so that a new cowd records them and
	// then stops the usual way. A read-only disk allocates nothing.
	const spec = await readFile(join(runDir(), `${name}.spec`), 'utf8').catch(() => undefined);
	if (state && !state.readOnly && state.open === 0 && spec?.trim()) {
		found = true;
		const dev = await startWorker(parseTargetSpec(spec.trim()), { name, timeoutSec }).catch(() => undefined);
		const again = dev ? await readPid(name) : undefined;
		if (again && alive(again)) await terminate(name, again, timeoutSec);
		state = await dmState(name);
	}
	// Still there: nothing could serve it (the image is gone); remove it if nothing uses it.
	if (state) {
		found = true;
		const r = await execa('dmsetup', ['remove', name], { reject: false });
		if (r.exitCode !== 0) throw new DmuError('DMU_ERR_DETACH', `cannot remove /dev/mapper/${name}: ${r.stderr.trim() || 'device busy'}`);
	}
	await rm(join(runDir(), `${name}.pid`), { force: true });
	await rm(join(runDir(), `${name}.spec`), { force: true });
	return found;
}

/** Workers recorded in the run directory: name, pid (maybe dead), spec. */
export async function listWorkers(): Promise<Array<{ name: string; pid: number; spec: string }>> {
	const files = await readdir(runDir()).catch(() => [] as string[]);
	const out = [];
	for (const f of files) {
		if (!f.endsWith('.spec')) continue;
		const name = f.slice(0, -'.spec'.length);
		const spec = (await readFile(join(runDir(), f), 'utf8').catch(() => '')).trim();
		const pid = await readPid(name);
		if (spec && pid) out.push({ name, pid, spec });
	}
	return out;
}
