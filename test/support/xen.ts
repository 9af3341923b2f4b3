/**
 * Xen end to end in QEMU: boot Xen 4.17 with Debian's 6.1 kernel as PV dom0
 * under TCG, start the Xen daemons, run a test's bash script in dom0 and
 * return what happened.
 *
 * dom0 sees the host root read-only over 9p (tmpfs on /tmp /run /var/log
 * /var/lib/xen /root /var/tmp) and the run directory, writable, at its host
 * path (DMU_OUT). The script runs with working directory <repo> and may write
 * results to $DMU_OUT; its exit status comes back through $DMU_OUT/exit-code.
 * Guests it starts can use DMU_DOMU_KERNEL and DMU_DOMU_RAMDISK (busybox +
 * xen-blkfront; its init runs `domuScript`); test/xen/harness/dom0-lib.sh has
 * helpers (dmu_guest_cfg, dmu_wait_gone, dmu_step). See test/xen/README.md.
 *
 * Each boot holds /tmp/dmu-vm.lock (one VM at a time on this machine) and is
 * bounded by `timeout -s KILL`.
 */
import { existsSync } from 'node:fs';
import { appendFile, cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { DmuError } from '../../src/errors.js';
import { cpio, harnessDir, repoRoot, type XenArtifacts, xenArtifacts } from '../xen/harness/build.js';

export { type XenArtifacts, xenArtifacts } from '../xen/harness/build.js';

export interface RunInXenOptions {
	/** bash script run in dom0 once the Xen daemons are up (text, not a path). */
	script: string;
	/** Files laid over the stock /etc/xen/scripts (bind-mounted in dom0), e.g. our block-dmu. */
	scriptsDir?: string;
	/** sh script (busybox) the domU ramdisk runs after its disks appear, before powering off. */
	domuScript?: string;
	/** Bound on the VM's life once it holds the lock, default 900 s. */
	timeoutSec?: number;
	/** Extra environment for the dom0 script. */
	env?: Record<string, string>;
	/** Names the run directory: .cache/xen-runs/<name>-<timestamp>/. Default "xen". */
	name?: string;
	/** Extra words for Xen's command line (e.g. 'dom0_max_vcpus=2'). */
	xenArgs?: string[];
}

export interface XenResult {
	/** The dom0 script's exit status; null if it never reported one (crash, timeout). */
	exitCode: number | null;
	/** Serial console: Xen and dom0 kernel messages, the script's output. */
	console: string;
	/** Run directory (DMU_OUT in dom0): dom0.log, steps.jsonl, guest-console/, xen-logs/, timeline. */
	outDir: string;
	/** Console lines (Xen, dom0, guests) that show a kernel or hypervisor problem. */
	kernelProblems: string[];
	/** Wall time of the call, including any wait for the VM lock. */
	durationMs: number;
	/** Wall time of the VM alone: from taking the lock to QEMU's exit. */
	vmMs: number;
	/** Killed by the timeout. */
	timedOut: boolean;
	/** QEMU's own exit status (0 after dom0 powers off). */
	qemuExitCode: number | null;
}

export const VM_LOCK = '/tmp/dmu-vm.lock';
const DEFAULT_TIMEOUT_SEC = 900;
const VM_NICE = -5;

/** Lines worth failing a test over, wherever they appear. */
const PROBLEM = /BUG:|WARNING:|Oops|Call Trace|[Kk]ernel panic|\(XEN\) Assertion/;

export function kernelProblems(text: string): string[] {
	return text.split('\n').filter((l) => PROBLEM.test(l));
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** A value as one single-quoted shell word. */
const shQuote = (v: string): string => `'${v.replaceAll("'", `'\\''`)}'`;

/** Per-run directory under <repo>/.cache/xen-runs/. Its path must survive QEMU's comma-separated -initrd. */
async function makeRunDir(name: string): Promise<string> {
	const base = join(repoRoot(), '.cache/xen-runs');
	await mkdir(base, { recursive: true });
	const stamp = new Date().toISOString().replace(/[:.]/g, '-');
	return mkdtemp(join(base, `${name}-${stamp}-`));
}

/** The domU ramdisk for this run: the cached base with domu.sh appended as a second cpio archive. */
async function domuRamdisk(art: XenArtifacts, outDir: string, script: string | undefined): Promise<string> {
	const base = await readFile(art.domuInitramfs);
	const dest = join(outDir, 'domu.cpio');
	if (script === undefined) {
		await writeFile(dest, base);
		return dest;
	}
	const dir = await mkdtemp(join(outDir, 'domu-extra-'));
	try {
		await writeFile(join(dir, 'domu.sh'), script, { mode: 0o755 });
		// The kernel unpacks concatenated archives in order.
		await writeFile(dest, Buffer.concat([base, await cpio(dir)]));
	} finally {
		await rm(dir, { recursive: true, force: true });
	}
	return dest;
}

function qemuArgs(art: XenArtifacts, outDir: string, xenArgs: string[]): string[] {
	const xenCmdline = [
		'console=com1',
		'com1=115200',
		'dom0_mem=1024M,max:1024M',
		'loglvl=warning',
		'guest_loglvl=warning',
		'noreboot',
		// SMAP under TCG crashes dom0 at once (#PF in create_bounce_frame).
		'smap=0',
		'smep=0',
		// One dom0 vCPU: TLB-flush IPIs between vCPUs are costly when QEMU's
		// threads compete with other work for the host's cores.
		'dom0_max_vcpus=1',
		...xenArgs,
	].join(' ');
	const dom0Cmdline = `${art.kernel} console=hvc0 earlyprintk=xen dmu.out=${outDir} dmu.harness=${harnessDir()}`;
	return [
		'-accel',
		'tcg',
		'-cpu',
		'max',
		'-m',
		'2048',
		'-smp',
		'2',
		'-display',
		'none',
		'-nodefaults',
		'-serial',
		'stdio',
		'-monitor',
		'none',
		'-no-reboot',
		'-kernel',
		art.xenElf,
		'-append',
		xenCmdline,
		// Multiboot modules: dom0 kernel (with its command line), then its initramfs.
		'-initrd',
		`${dom0Cmdline},${art.dom0Initramfs}`,
		'-fsdev',
		'local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap',
		'-device',
		'virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot',
		'-fsdev',
		`local,id=fsout,path=${outDir},security_model=none`,
		'-device',
		'virtio-9p-pci,fsdev=fsout,mount_tag=out',
	];
}

async function readIfExists(path: string): Promise<string> {
	try {
		return await readFile(path, 'utf8');
	} catch {
		return '';
	}
}

/** Problems in the serial console and in every guest's console log. */
async function collectProblems(consoleText: string, outDir: string): Promise<string[]> {
	const found = kernelProblems(consoleText);
	const guestDir = join(outDir, 'guest-console');
	if (existsSync(guestDir)) {
		for (const f of (await readdir(guestDir)).sort()) {
			for (const l of kernelProblems(await readIfExists(join(guestDir, f)))) found.push(`${f}: ${l}`);
		}
	}
	return found;
}

/** Boot Xen in QEMU, run `opts.script` in dom0, return its result. */
export async function runInXen(opts: RunInXenOptions): Promise<XenResult> {
	const name = opts.name ?? 'xen';
	if (!NAME.test(name)) throw new DmuError('DMU_ERR_XEN_HARNESS', `bad run name "${name}" (letters, digits, _ . -)`);
	const timeoutSec = opts.timeoutSec ?? DEFAULT_TIMEOUT_SEC;
	if (!Number.isInteger(timeoutSec) || timeoutSec <= 0)
		throw new DmuError('DMU_ERR_XEN_HARNESS', `bad timeoutSec ${timeoutSec}`);
	for (const k of Object.keys(opts.env ?? {})) {
		if (!ENV_KEY.test(k) || k.startsWith('DMU_OUT') || k === 'DMU_HARNESS')
			throw new DmuError('DMU_ERR_XEN_HARNESS', `bad environment variable name "${k}"`);
	}
	if (opts.scriptsDir !== undefined && !existsSync(opts.scriptsDir))
		throw new DmuError('DMU_ERR_XEN_HARNESS', `scriptsDir ${opts.scriptsDir} does not exist`);
	// dom0 mounts tmpfs over these (see the top of this file), hiding a
	// checkout below them: say so instead of failing in the guest.
	const root = repoRoot();
	const hidden = ['/tmp/', '/run/', '/var/log/', '/var/lib/xen/', '/root/', '/var/tmp/'].find((d) => `${root}/`.startsWith(d));
	if (hidden) {
		throw new DmuError('DMU_ERR_XEN_HARNESS', `the checkout ${root} lies under ${hidden}, which dom0 covers with tmpfs: move it elsewhere to run the Xen tests`);
	}

	const art = await xenArtifacts();
	const outDir = await makeRunDir(name);
	const ramdisk = await domuRamdisk(art, outDir, opts.domuScript);
	await writeFile(join(outDir, 'dom0.sh'), opts.script, { mode: 0o755 });
	if (opts.scriptsDir !== undefined) {
		// Stock scripts first (block-common.sh, locking.sh, ...), ours on top.
		const dest = join(outDir, 'xen-scripts');
		await cp('/etc/xen/scripts', dest, { recursive: true });
		await cp(opts.scriptsDir, dest, { recursive: true, force: true });
	}
	const env: Record<string, string> = {
		...opts.env,
		DMU_WORKDIR: repoRoot(),
		DMU_DOMU_KERNEL: art.kernel,
		DMU_DOMU_RAMDISK: ramdisk,
		DMU_KVER: art.kver,
	};
	await writeFile(
		join(outDir, 'env.sh'),
		Object.entries(env)
			.map(([k, v]) => `export ${k}=${shQuote(v)}\n`)
			.join(''),
	);

	const consolePath = join(outDir, 'console.log');
	const lockedAt = join(outDir, 'lock-acquired');
	const start = Date.now();
	const r = await execa(
		'flock',
		[
			VM_LOCK,
			// Note when the lock was taken (a fixed script; the file is $0), so the
			// VM's own time can be told from the wait for other tests' VMs.
			'sh',
			'-c',
			'date +%s%3N > "$0"; exec "$@"',
			lockedAt,
			// libxl kills a hotplug script after a fixed 40 s, and a PV dom0 under
			// TCG spends ~0.3 s per exec: on a busy host the stock block script
			// misses that bound. The VM holding the lock gets a larger CPU share.
			'nice',
			'-n',
			String(VM_NICE),
			'timeout',
			'-s',
			'KILL',
			String(timeoutSec),
			'qemu-system-x86_64',
			...qemuArgs(art, outDir, opts.xenArgs ?? []),
		],
		// The console streams into the run dir, so a hung boot can be watched live.
		{ stdin: 'ignore', stdout: { file: consolePath }, stderr: 'pipe', reject: false },
	);
	const qemuExitCode = r.exitCode ?? null;
	if (r.stderr) await appendFile(consolePath, `\n[qemu stderr]\n${r.stderr}\n`);
	const end = Date.now();
	const locked = Number((await readIfExists(lockedAt)).trim());
	const vmMs = Number.isFinite(locked) && locked >= start ? end - locked : end - start;

	const consoleText = await readIfExists(consolePath);
	const rcText = (await readIfExists(join(outDir, 'exit-code'))).trim();
	const exitCode = /^\d+$/.test(rcText) ? Number(rcText) : null;
	return {
		exitCode,
		console: consoleText,
		outDir,
		kernelProblems: await collectProblems(consoleText, outDir),
		durationMs: end - start,
		vmMs,
		// timeout(1) exits 128+9 when it had to kill QEMU.
		timedOut: qemuExitCode === 137,
		qemuExitCode,
	};
}

/** One line of $DMU_OUT/steps.jsonl, written by dmu_step in dom0-lib.sh. */
export interface XenStep {
	step: string;
	ok: boolean;
	status: number;
	detail: string;
	uptime: number;
}

/** The steps a dom0 script recorded with dmu_step, in order. */
export async function readSteps(outDir: string): Promise<XenStep[]> {
	const text = await readIfExists(join(outDir, 'steps.jsonl'));
	return text
		.split('\n')
		.filter((l) => l.trim() !== '')
		.map((l) => JSON.parse(l) as XenStep);
}
