/**
 * `dmu doctor`: what this host offers dmu, what is missing, and how to get
 * it. Every check reads the system (procfs, device nodes, binaries); none
 * changes it. Exit status: 0 when everything needed to attach disks is
 * there, 1 otherwise (optional pieces such as Xen only warn).
 */
import { access, constants, readFile, readdir, stat } from 'node:fs/promises';
import { execa } from 'execa';
import type { Command } from 'commander';

export type Status = 'ok' | 'missing' | 'warn';

export interface Check {
	id: string;
	title: string;
	status: Status;
	detail: string;
	/** How to fix it, when it is not ok. */
	fix?: string;
	/** Needed to attach a disk (otherwise only for Xen or image tools). */
	required: boolean;
}

const exists = (p: string, mode = constants.F_OK) =>
	access(p, mode).then(
		() => true,
		() => false,
	);

async function which(cmd: string): Promise<string | undefined> {
	for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
		const p = `${dir}/${cmd}`;
		if (await exists(p, constants.X_OK)) return p;
	}
	return undefined;
}

async function firstLine(cmd: string, args: string[]): Promise<string> {
	const r = await execa(cmd, args, { reject: false, timeout: 10_000 });
	return `${r.stdout}\n${r.stderr}`.trim().split('\n')[0] ?? '';
}

async function checkDeviceMapper(): Promise<Check> {
	const misc = await readFile('/proc/misc', 'utf8').catch(() => '');
	const devs = await readFile('/proc/devices', 'utf8').catch(() => '');
	const present = /\bdevice-mapper\b/.test(misc) || /\bdevice-mapper\b/.test(devs);
	const node = await exists('/dev/mapper/control');
	const ok = present && node;
	return {
		id: 'device-mapper',
		title: 'device-mapper in the kernel',
		required: true,
		status: ok ? 'ok' : 'missing',
		detail: ok ? '/dev/mapper/control present' : present ? 'registered but /dev/mapper/control is missing' : 'not registered in /proc/misc',
		fix: ok ? undefined : 'modprobe dm-mod (CONFIG_BLK_DEV_DM); the node appears with devtmpfs or `dmsetup mknodes`',
	};
}

async function checkModule(kver: string): Promise<Check> {
	const targets = await readFile('/proc/modules', 'utf8').catch(() => undefined);
	if (targets !== undefined && /^dmu /m.test(targets)) {
		return { id: 'dm-userspace', title: 'dm-userspace target (dmu.ko)', required: true, status: 'ok', detail: 'module dmu loaded' };
	}
	const dmsetup = await which('dmsetup');
	if (dmsetup) {
		const r = await execa(dmsetup, ['targets'], { reject: false, timeout: 10_000 });
		if (/^userspace\s/m.test(r.stdout)) {
			return { id: 'dm-userspace', title: 'dm-userspace target (dmu.ko)', required: true, status: 'ok', detail: 'target "userspace" registered' };
		}
	}
	const headers = `/lib/modules/${kver}/build`;
	const canLoad = targets !== undefined;
	const haveHeaders = await exists(headers);
	let detail = 'not loaded';
	let fix: string;
	if (!canLoad) {
		detail += '; this kernel cannot load modules (/proc/modules is absent)';
		fix = 'use a kernel with module support, or run the test VM: npm run demo';
	} else if (haveHeaders) {
		detail += `; headers for ${kver} are installed, so it can be built`;
		fix = `make -C kernel KVER=${kver} && insmod kernel/build/${kver}/dmu.ko (or: dkms install kernel/)`;
	} else {
		detail += `; no headers for ${kver}`;
		fix = `apt-get install linux-headers-${kver}, then make -C kernel KVER=${kver}`;
	}
	return { id: 'dm-userspace', title: 'dm-userspace target (dmu.ko)', required: true, status: 'missing', detail, fix };
}

async function checkLoop(): Promise<Check> {
	const control = await exists('/dev/loop-control');
	const losetup = await which('losetup');
	const ok = control && !!losetup;
	return {
		id: 'loop',
		title: 'loop devices (image files)',
		required: true,
		status: ok ? 'ok' : 'missing',
		detail: [control ? '/dev/loop-control present' : 'no /dev/loop-control', losetup ? `losetup at ${losetup}` : 'no losetup'].join(', '),
		fix: ok ? undefined : `${control ? '' : 'modprobe loop; '}${losetup ? '' : 'apt-get install util-linux'}`.trim(),
	};
}

async function checkTool(id: string, cmd: string, title: string, pkg: string, args: string[], required: boolean): Promise<Check> {
	const path = await which(cmd);
	if (!path) return { id, title, required, status: required ? 'missing' : 'warn', detail: `${cmd} not found`, fix: `apt-get install ${pkg}` };
	return { id, title, required, status: 'ok', detail: `${path}: ${await firstLine(path, args)}` };
}

async function checkXenstore(): Promise<Check> {
	const candidates = [process.env.XENSTORED_PATH, '/run/xenstored/socket', '/var/run/xenstored/socket', '/dev/xen/xenbus'].filter(
		(p): p is string => !!p,
	);
	for (const p of candidates) {
		const s = await stat(p).catch(() => undefined);
		if (s && (s.isSocket() || s.isCharacterDevice())) {
			return { id: 'xenstore', title: 'xenstore reachable', required: false, status: 'ok', detail: p };
		}
	}
	return {
		id: 'xenstore',
		title: 'xenstore reachable',
		required: false,
		status: 'warn',
		detail: `none of ${candidates.join(', ')}`,
		fix: 'only needed for Xen: boot dom0 under Xen and start xenstored (systemctl start xenstored)',
	};
}

async function checkXenToolstack(): Promise<Check> {
	const xl = await which('xl');
	const hv = await exists('/proc/xen/capabilities');
	if (!xl) {
		return { id: 'xen', title: 'Xen toolstack (xl)', required: false, status: 'warn', detail: 'xl not found', fix: 'only needed for Xen: apt-get install xen-utils' };
	}
	const caps = hv ? (await readFile('/proc/xen/capabilities', 'utf8').catch(() => '')).trim() : '';
	return {
		id: 'xen',
		title: 'Xen toolstack (xl)',
		required: false,
		status: caps.includes('control_d') ? 'ok' : 'warn',
		detail: `${xl}${caps.includes('control_d') ? ', running as dom0' : ', but this is not a Xen dom0'}`,
		fix: caps.includes('control_d') ? undefined : 'boot the Xen hypervisor with this system as dom0',
	};
}

async function checkGuestKernels(): Promise<Check> {
	const boot = await readdir('/boot').catch(() => [] as string[]);
	const kernels = boot.filter((f) => /^vmlinuz-6\.(1|12)\./.test(f)).map((f) => f.slice('vmlinuz-'.length));
	const ok = kernels.some((k) => k.startsWith('6.1.')) && kernels.some((k) => k.startsWith('6.12.'));
	return {
		id: 'test-kernels',
		title: 'Debian 6.1 and 6.12 kernels for the test VM',
		required: false,
		status: ok ? 'ok' : 'warn',
		detail: kernels.length ? kernels.join(', ') : 'none in /boot',
		fix: ok ? undefined : 'bash .ci/install-deps',
	};
}

export async function runChecks(): Promise<Check[]> {
	const kver = (await readFile('/proc/sys/kernel/osrelease', 'utf8').catch(() => 'unknown')).trim();
	return Promise.all([
		checkDeviceMapper(),
		checkModule(kver),
		checkLoop(),
		checkTool('dmsetup', 'dmsetup', 'dmsetup', 'dmsetup', ['--version'], true),
		checkTool('qemu-img', 'qemu-img', 'qemu-img (format interop)', 'qemu-utils', ['--version'], false),
		checkXenstore(),
		checkXenToolstack(),
		checkTool('qemu-system', 'qemu-system-x86_64', 'QEMU (test VM, demo)', 'qemu-system-x86', ['--version'], false),
		checkGuestKernels(),
	]);
}

const MARK: Record<Status, string> = { ok: 'ok     ', missing: 'MISSING', warn: 'warn   ' };

export function register(program: Command): void {
	program
		.command('doctor')
		.description('check what this host offers dmu and say how to get what is missing')
		.option('--json', 'print the checks as JSON (for scripts)')
		.addHelpText(
			'after',
			'\nExit status: 0 when everything needed to attach disks is present, 1 otherwise.\nXen, qemu-img and the test-VM pieces are optional and only warn.',
		)
		.action(async (opts: { json?: boolean }) => {
			const checks = await runChecks();
			const ready = checks.every((c) => !c.required || c.status === 'ok');
			if (opts.json) {
				process.stdout.write(`${JSON.stringify({ ready, checks }, null, 2)}\n`);
			} else {
				for (const c of checks) {
					process.stdout.write(`${MARK[c.status]}  ${c.title}: ${c.detail}\n`);
					if (c.fix) process.stdout.write(`         -> ${c.fix}\n`);
				}
				process.stdout.write(ready ? '\ndmu can attach disks on this host.\n' : '\ndmu cannot attach disks on this host yet (see MISSING above).\n');
			}
			process.exitCode = ready ? 0 : 1;
		});
}
