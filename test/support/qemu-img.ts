/**
 * Small helpers around Debian's qemu-img and qemu-io for interop tests:
 * build images with the reference implementation, and judge ours with it.
 * Arguments are passed as arrays (never a shell string).
 */
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

export interface QemuResult {
	exitCode: number;
	stdout: string;
	stderr: string;
}

async function run(cmd: string, args: string[]): Promise<QemuResult> {
	const r = await execa(cmd, args, { reject: false, timeout: 120_000 });
	return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** Run qemu-img; throws with its stderr when it fails. */
export async function qemuImg(...args: string[]): Promise<string> {
	const r = await run('qemu-img', args);
	if (r.exitCode !== 0) throw new Error(`qemu-img ${args.join(' ')}: exit ${r.exitCode}: ${r.stderr.trim()}`);
	return r.stdout;
}

/** qemu-img without throwing (check and compare use their exit codes). */
export const qemuImgRaw = (...args: string[]): Promise<QemuResult> => run('qemu-img', args);

export interface CreateOpts {
	size?: string | number;
	/** -o key=value options. */
	options?: Record<string, string | number>;
	backing?: string;
	backingFormat?: string;
}

export async function qemuCreate(path: string, format: string, opts: CreateOpts = {}): Promise<void> {
	const args = ['create', '-q', '-f', format];
	const o = Object.entries(opts.options ?? {}).map(([k, v]) => `${k}=${v}`);
	if (o.length) args.push('-o', o.join(','));
	if (opts.backing) args.push('-b', opts.backing, '-F', opts.backingFormat ?? 'qcow2');
	args.push(path);
	if (opts.size !== undefined) args.push(String(opts.size));
	await qemuImg(...args);
}

/** qemu-io commands (e.g. 'write -P 0x11 0 64k') on an image; throws on failure. */
export async function qemuIo(path: string, cmds: string[], format = 'qcow2'): Promise<string> {
	const args = ['-f', format];
	for (const c of cmds) args.push('-c', c);
	args.push(path);
	const r = await run('qemu-io', args);
	if (r.exitCode !== 0 || /error|failed/i.test(r.stdout + r.stderr)) {
		throw new Error(`qemu-io ${cmds.join('; ')}: exit ${r.exitCode}: ${(r.stderr || r.stdout).trim()}`);
	}
	return r.stdout;
}

/** The guest-visible bytes of an image, as QEMU reads them. */
export async function qemuRead(path: string, format = 'qcow2'): Promise<Buffer> {
	const dir = await mkdtemp(join(tmpdir(), 'dmu-qemu-raw-'));
	try {
		const out = join(dir, 'out.raw');
		await qemuImg('convert', '-f', format, '-O', 'raw', path, out);
		return await readFile(out);
	} finally {
		await rm(dir, { recursive: true, force: true });
	}
}

export interface CheckReport {
	exitCode: number;
	corruptions: number;
	leaks: number;
	raw: string;
}

/** qemu-img check --output=json: exit 0 clean, 2 corrupt, 3 leaks. */
export async function qemuCheck(path: string, format = 'qcow2'): Promise<CheckReport> {
	const r = await run('qemu-img', ['check', '-f', format, '--output=json', path]);
	// Zero counts are left out of the JSON; no JSON at all means the image did not open.
	let j: { corruptions?: number; leaks?: number } | undefined;
	try {
		j = JSON.parse(r.stdout) as typeof j;
	} catch {
		j = undefined;
	}
	const n = (v: number | undefined): number => (j ? (v ?? 0) : -1);
	return { exitCode: r.exitCode, corruptions: n(j?.corruptions), leaks: n(j?.leaks), raw: r.stdout + r.stderr };
}

/** qemu-img compare: exit 0 when the guest-visible contents are equal. */
export const qemuCompare = (a: string, b: string, fa = 'qcow2', fb = 'raw'): Promise<QemuResult> =>
	run('qemu-img', ['compare', '-f', fa, '-F', fb, a, b]);

/**
 * A temp dir removed by the returned function. `memory` puts it on tmpfs
 * (/dev/shm) when there is one: fsync is free there, which fuzz loops need.
 */
export async function tempDir(prefix = 'dmu-test-', memory = false): Promise<{ dir: string; cleanup: () => Promise<void> }> {
	const base = memory && (await stat('/dev/shm').then((s) => s.isDirectory(), () => false)) ? '/dev/shm' : tmpdir();
	const dir = await mkdtemp(join(base, prefix));
	return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}
