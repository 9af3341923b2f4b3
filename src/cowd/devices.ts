/**
 * Device setup through the system tools (execa, never a shell): loop
 * devices for image files, the dm "userspace" table, removal.
 *
 * Loop devices are detached with `losetup -d` as soon as the dm table holds
 * them: the kernel then only marks them autoclear, and they vanish by
 * themselves when the dm device is removed, even if cowd is long gone.
 */
import { constants } from 'node:fs';
import { open, readFile, realpath, stat } from 'node:fs/promises';
import { execa } from 'execa';
import type { Logger } from 'pino';
import { DmuError } from '../errors.js';

const TOOL_TIMEOUT = 30_000;

async function tool(cmd: string, args: string[], signal?: AbortSignal) {
	try {
		return await execa(cmd, args, { reject: false, timeout: TOOL_TIMEOUT, ...(signal ? { cancelSignal: signal } : {}) });
	} catch (e) {
		throw new DmuError('DMU_ERR_TOOL', `cannot run ${cmd}: ${(e as Error).message.split('\n')[0]}`);
	}
}

const firstLine = (s: string) => s.trim().split('\n')[0] ?? '';

export const MODULE_HINT = 'make -C kernel && insmod kernel/build/$(uname -r)/dmu.ko, or dkms install';

/** Refuse early, with the fix, when the kernel side is missing. */
export async function checkKernel(): Promise<void> {
	const misc = await readFile('/proc/misc', 'utf8').catch(() => '');
	if (!/\bdevice-mapper\b/.test(misc)) {
		throw new DmuError('DMU_ERR_NO_DM', 'device-mapper is not available in this kernel (modprobe dm_mod)');
	}
	// Loop devices for image files: the loop driver is a module on Debian.
	if (!(await stat('/dev/loop-control').then(() => true, () => false))) await tool('modprobe', ['loop']);
	// Our module loaded registers the target: no need to start dmsetup
	// (every process counts inside libxl's hotplug time limit).
	if (await stat('/sys/module/dmu').then(() => true, () => false)) return;
	const r = await tool('dmsetup', ['targets']);
	if (r.exitCode !== 0) throw new DmuError('DMU_ERR_NO_DM', `dmsetup targets failed: ${firstLine(r.stderr)}`);
	if (!/^userspace\s/m.test(r.stdout)) {
		throw new DmuError('DMU_ERR_NO_MODULE', `the dm-userspace kernel module is not loaded: ${MODULE_HINT}`);
	}
}

export const isBlockDevice = async (path: string) => (await stat(path)).isBlockDevice();

/**
 * Can `file` be opened with O_DIRECT at all? tmpfs and some network file
 * systems say EINVAL; asking here costs no process, where a refused
 * `losetup --direct-io=on` costs one (a second or more in an emulated Xen
 * dom0, inside libxl's hotplug time limit).
 */
async function openableDirect(file: string, readOnly: boolean): Promise<boolean> {
	try {
		const fh = await open(file, (readOnly ? constants.O_RDONLY : constants.O_RDWR) | constants.O_DIRECT);
		await fh.close();
		return true;
	} catch (e) {
		return (e as NodeJS.ErrnoException).code !== 'EINVAL';
	}
}

/** Attach a file as a loop device; direct I/O when the file system allows it. */
export async function attachLoop(file: string, readOnly: boolean, directIo: boolean, log: Logger): Promise<string> {
	const base = ['--find', '--show', ...(readOnly ? ['--read-only'] : [])];
	if (directIo && !(await openableDirect(file, readOnly))) {
		log.info({ file }, 'the backing file system does not do direct I/O (O_DIRECT: EINVAL), using buffered loop');
	} else if (directIo) {
		const r = await tool('losetup', [...base, '--direct-io=on', file]);
		if (r.exitCode === 0) return r.stdout.trim();
		log.info({ file, err: firstLine(r.stderr) }, 'direct I/O refused by the backing file system, using buffered loop');
	}
	const r = await tool('losetup', [...base, file]);
	if (r.exitCode !== 0) throw new DmuError('DMU_ERR_LOOP', `losetup ${file}: ${firstLine(r.stderr)}`);
	return r.stdout.trim();
}

/** Detach (or, while the dm table holds it, mark autoclear). */
export async function detachLoop(dev: string, log: Logger): Promise<void> {
	const r = await tool('losetup', ['--detach', dev]);
	if (r.exitCode !== 0) log.warn({ dev, err: firstLine(r.stderr) }, 'losetup --detach failed');
}

/** The table of an existing dm device, or undefined when there is none. */
export async function dmTable(name: string): Promise<string | undefined> {
	const r = await tool('dmsetup', ['table', name]);
	if (r.exitCode !== 0) return undefined;
	return r.stdout.trim();
}

/** Counters from `dmsetup status` (see kernel/dm-userspace.c). */
export interface DmuStatus {
	hits: bigint;
	misses: bigint;
	pending: number;
	copies: bigint;
	flushes: bigint;
	commits: bigint;
	evictions: bigint;
	mapped: number;
	daemon: string;
}

export async function dmStatus(name: string): Promise<DmuStatus | undefined> {
	const r = await tool('dmsetup', ['status', name]);
	if (r.exitCode !== 0) return undefined;
	return parseStatus(r.stdout);
}

export function parseStatus(line: string): DmuStatus | undefined {
	const f = line.trim().split(/\s+/);
	if (f[2] !== 'userspace' || f.length < 12) return undefined;
	const n = (i: number) => BigInt(f[i]!);
	return {
		hits: n(3),
		misses: n(4),
		pending: Number(f[5]),
		copies: n(6),
		flushes: n(7),
		commits: n(8),
		evictions: n(9),
		mapped: Number(f[10]),
		daemon: f[11]!.replace(/^daemon=/, ''),
	};
}

export async function dmCreate(name: string, table: string, readOnly: boolean): Promise<void> {
	// --noudevsync + mknodes: works the same with and without udev (VMs, initramfs).
	const r = await tool('dmsetup', ['create', name, '--noudevsync', ...(readOnly ? ['--readonly'] : []), '--table', table]);
	if (r.exitCode !== 0) throw new DmuError('DMU_ERR_DMSETUP', `dmsetup create ${name}: ${firstLine(r.stderr)}`);
	await tool('dmsetup', ['mknodes', name]);
}

/** Remove the dm device; false when it is open (mounted, in use). */
export async function dmRemove(name: string, log: Logger): Promise<boolean> {
	const r = await tool('dmsetup', ['remove', '--noudevsync', name]);
	if (r.exitCode === 0) return true;
	log.warn({ err: firstLine(r.stderr) }, 'dmsetup remove failed');
	return false;
}

/** The file behind a loop device given as "major:minor", if it is one. */
export async function loopBackingFile(majMin: string): Promise<string | undefined> {
	const f = await readFile(`/sys/dev/block/${majMin}/loop/backing_file`, 'utf8').catch(() => undefined);
	return f?.trim().replace(/ \(deleted\)$/, '');
}

/** "major:minor" of a block device path. */
export async function majMinOf(path: string): Promise<string> {
	const st = await stat(path, { bigint: true });
	const rdev = st.rdev;
	const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
	const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
	return `${major}:${minor}`;
}

export const real = (p: string) => realpath(p).catch(() => p);
