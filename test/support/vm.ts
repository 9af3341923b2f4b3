/**
 * Run a bash script inside a QEMU (TCG) guest booted from one of Debian's
 * stock kernels, with the host root visible read-only (9p + tmpfs overlay).
 * This is the only place the kernel side of dmu can run: the host kernel has
 * no device-mapper and cannot load modules. How it works: test/vm/README.md.
 *
 * One VM at a time on the machine: every launch holds `flock /tmp/dmu-vm.lock`
 * for the VM's lifetime, and a hung guest is SIGKILLed after `timeoutSec`.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

export type KernelSeries = '6.1' | '6.12';

export interface GuestKernel {
	series: KernelSeries;
	/** e.g. 6.1.0-56-amd64 (what `uname -r` says in the guest). */
	kver: string;
	/** Host path of the bzImage it comes from. */
	vmlinuz: string;
}

/** Guest clocksources runInVm can boot with (see VmOptions.clock). */
export const GUEST_CLOCKS = ['hpet', 'tsc'] as const;
export type GuestClock = (typeof GUEST_CLOCKS)[number];

export type VmDisk =
	/** A fresh sparse raw image of this size, created in the run directory and deleted afterwards. */
	| { sizeMiB: number }
	/** An existing raw image or block device on the host. */
	| { path: string; readOnly?: boolean };

export interface VmOptions {
	kernel: KernelSeries;
	/** Bash script run as root in the guest, in /work/main (the repo), with DMU_OUT and KVER set. */
	script: string;
	/** Appear as /dev/vda, /dev/vdb ... in order. */
	disks?: VmDisk[];
	/** Hard bound on the VM's life (after the VM lock is taken). Default 600. */
	timeoutSec?: number;
	/** Guest memory. Default 2048. */
	memMiB?: number;
	/** Guest CPUs (TCG threads). Default 2. */
	cpus?: number;
	/**
	 * The guest's clocksource. Default 'hpet' (`tsc=unstable`): tests keep
	 * the clock the kernel trusts under TCG. 'tsc' (`tsc=reliable
	 * clocksource=tsc`) is for benchmarks: every HPET read is an emulated
	 * MMIO access, and fio's clock_gettime() calls (a syscall each, no vDSO
	 * on HPET) were over half of a job's CPU; with the TSC a timestamp costs
	 * what it does on real hardware.
	 */
	clock?: GuestClock;
	/** Extra environment for the script. */
	env?: Record<string, string>;
	/** Names the run directory. Default "vm". */
	name?: string;
	/** Keep the images created for `{ sizeMiB }` disks (they are deleted by default). */
	keepDisks?: boolean;
	/**
	 * Power cut: once the guest creates `file` in $DMU_OUT, wait `afterMs` and
	 * SIGKILL QEMU (its whole process group), as a power cut would stop it.
	 * Writes QEMU completed stay in the host's page cache (the disk file);
	 * the guest's page cache and requests in flight are lost. The result then
	 * has `killed: true` and exitCode -1.
	 */
	killWhen?: { file: string; afterMs: number };
	/** Called with each console line as it arrives (live progress of long runs). */
	onLine?: (line: string) => void;
	/** Extra kernel command line (the harness's tests make a boot fail with it). */
	kernelArgs?: string;
}

export interface VmResult {
	/** The script's exit status; -1 when the guest never reported one (crash, timeout). */
	exitCode: number;
	/** Serial console (kernel messages at loglevel <= warning, harness markers, script output). */
	console: string;
	/** Host path of the run directory: files the guest wrote to $DMU_OUT, console.log, dmesg.txt. */
	outDir: string;
	/** Kernel log lines that indicate a kernel bug (see KERNEL_PROBLEM). */
	kernelProblems: string[];
	/** Wall time of the VM, from taking the VM lock to QEMU's exit (the first boot's lock to the last exit, if booted again). */
	durationMs: number;
	timedOut: boolean;
	/** QEMU was SIGKILLed on purpose (`killWhen`); set by runInVm, absent in hand-made results. */
	killed?: boolean;
	/** Finer timings, for the curious and for the README. */
	timing: {
		/** Time spent waiting for another VM to finish. */
		lockWaitMs: number;
		/** Guest uptime when the script started (boot + mounts), or -1. */
		bootMs: number;
		/**
		 * Boots it took: 2 when the guest kernel died before the script
		 * started and was booted again (see bootCrashed); the first
		 * console is kept as console-boot1.log.
		 */
		bootAttempts: number;
	};
}

/**
 * What marks a kernel problem in a kernel log line. Case-sensitive on purpose:
 * "loops_per_jiffy" must not count as an Oops.
 */
const KERNEL_PROBLEM =
	/\bBUG:|\bWARNING:|\bOops\b|\bCall Trace|general protection fault|[Kk]ernel panic|blocked for more than/;
/** Kernel lines on the console carry a printk timestamp; script output does not. */
const PRINTK_TIME = /\[\s*\d+\.\d{6}\]/;

/**
 * Did the guest kernel die before the test script started? Multi-threaded
 * TCG now and then trips over the kernel patching its own text while it
 * boots (seen here once in about 150 boots: "Oops: int3" in
 * run_timer_softirq, before any module of ours was loaded). Nothing of the
 * test has run then and no disk was touched, so the harness boots again.
 */
export function bootCrashed(consoleText: string): boolean {
	if (consoleText.includes('@@DMU script-start')) return false;
	return consoleText.split('\n').some((l) => PRINTK_TIME.test(l) && KERNEL_PROBLEM.test(l));
}

/** A boot that crashed is tried again once: twice in a row is no flake. */
const BOOT_ATTEMPTS = 2;

const VM_LOCK = '/tmp/dmu-vm.lock';
const VM_QUEUE = '/tmp/dmu-vm.queue';
const DEFAULT_TIMEOUT_SEC = 600;

/** The repo root: the nearest ancestor holding package.json (works from test/ and dist/test/). */
function findRepoRoot(): string {
	let dir = path.dirname(fileURLToPath(import.meta.url));
	while (!fs.existsSync(path.join(dir, 'package.json'))) {
		const up = path.dirname(dir);
		if (up === dir) throw new Error('vm: cannot find the repo root (package.json)');
		dir = up;
	}
	return dir;
}

export const REPO_ROOT = findRepoRoot();
const HARNESS_DIR = path.join(REPO_ROOT, 'test/vm/harness');
const CACHE_DIR = path.join(REPO_ROOT, '.cache/vm');
const RUNS_DIR = path.join(REPO_ROOT, '.cache/vm-runs');

/** Compare version strings chunk by chunk, numbers numerically (6.1.0-9 < 6.1.0-56). */
function compareVersions(a: string, b: string): number {
	const pa = a.split(/(\d+)/);
	const pb = b.split(/(\d+)/);
	for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
		const x = pa[i] ?? '';
		const y = pb[i] ?? '';
		if (x === y) continue;
		const nx = Number(x);
		const ny = Number(y);
		if (x !== '' && y !== '' && !Number.isNaN(nx) && !Number.isNaN(ny)) return nx - ny;
		return x < y ? -1 : 1;
	}
	return 0;
}

/**
 * The guest kernels installed on this host: the newest /boot/vmlinuz-6.1.* and
 * /boot/vmlinuz-6.12.* (KVER_61 / KVER_612 override). A series with no kernel
 * is left out, so callers can skip rather than fail.
 */
export function guestKernels(): GuestKernel[] {
	const names = fs.readdirSync('/boot').filter((n) => n.startsWith('vmlinuz-'));
	const out: GuestKernel[] = [];
	const series: Array<[KernelSeries, string]> = [
		['6.1', 'KVER_61'],
		['6.12', 'KVER_612'],
	];
	for (const [s, envName] of series) {
		const forced = process.env[envName];
		const prefix = `vmlinuz-${s}.`;
		const kvers = forced
			? [forced]
			: names
					.filter((n) => n.startsWith(prefix))
					.map((n) => n.slice('vmlinuz-'.length))
					.sort(compareVersions);
		const kver = kvers[kvers.length - 1];
		if (kver === undefined) continue;
		const vmlinuz = `/boot/vmlinuz-${kver}`;
		if (!fs.existsSync(vmlinuz)) continue;
		out.push({ series: s, kver, vmlinuz });
	}
	return out;
}

function guestKernel(series: KernelSeries): GuestKernel {
	const k = guestKernels().find((g) => g.series === series);
	if (!k) throw new Error(`vm: no /boot/vmlinuz-${series}.* kernel installed (run .ci/install-deps)`);
	return k;
}

function sha256(file: string): string {
	return createHash('sha256').update(fs.readFileSync(file)).digest('hex').slice(0, 16);
}

const prepared = new Map<string, Promise<{ vmlinux: string; initramfs: string }>>();

/**
 * vmlinux + initramfs for a kernel, cached in .cache/vm/<KVER>/ and rebuilt
 * when the kernel file or the harness scripts change.
 */
export function prepareKernel(k: GuestKernel): Promise<{ vmlinux: string; initramfs: string }> {
	let p = prepared.get(k.kver);
	if (!p) {
		p = (async () => {
			const dir = path.join(CACHE_DIR, k.kver);
			const st = fs.statSync(k.vmlinuz);
			const key = [
				`vmlinuz=${st.size}:${Math.floor(st.mtimeMs)}`,
				...['init', 'mkinitramfs.sh', 'extract-vmlinux.sh'].map(
					(f) => `${f}=${sha256(path.join(HARNESS_DIR, f))}`,
				),
			].join(' ');
			fs.mkdirSync(CACHE_DIR, { recursive: true });
			// flock: another test process may be building the same cache.
			await execa(
				'flock',
				[
					path.join(CACHE_DIR, `${k.kver}.lock`),
					path.join(HARNESS_DIR, 'prepare.sh'),
					k.kver,
					k.vmlinuz,
					dir,
					key,
				],
				{ stdio: ['ignore', 'pipe', 'pipe'] },
			);
			return { vmlinux: path.join(dir, 'vmlinux'), initramfs: path.join(dir, 'initramfs.cpio.gz') };
		})();
		prepared.set(k.kver, p);
		p.catch(() => prepared.delete(k.kver));
	}
	return p;
}

/** Quote for bash: single quotes, with ' written as '\''. */
function shQuote(s: string): string {
	return `'${s.replaceAll("'", "'\\''")}'`;
}

/** QEMU option values escape ',' by doubling it. */
function qemuEscape(s: string): string {
	return s.replaceAll(',', ',,');
}

function validate(opts: VmOptions): void {
	if (opts.kernel !== '6.1' && opts.kernel !== '6.12') {
		throw new Error(`vm: kernel must be '6.1' or '6.12', got ${String(opts.kernel)}`);
	}
	for (const name of Object.keys(opts.env ?? {})) {
		if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`vm: bad env name ${JSON.stringify(name)}`);
	}
	if (opts.name !== undefined && !/^[A-Za-z0-9._-]{1,64}$/.test(opts.name)) {
		throw new Error(`vm: name must match [A-Za-z0-9._-]{1,64}, got ${JSON.stringify(opts.name)}`);
	}
	for (const d of opts.disks ?? []) {
		if ('sizeMiB' in d) {
			if (!Number.isInteger(d.sizeMiB) || d.sizeMiB <= 0) throw new Error(`vm: bad disk size ${d.sizeMiB}`);
		} else if (!fs.existsSync(d.path)) {
			throw new Error(`vm: disk ${d.path} does not exist`);
		}
	}
	if (opts.disks && opts.disks.length > 20) throw new Error('vm: at most 20 disks');
	const t = opts.timeoutSec ?? DEFAULT_TIMEOUT_SEC;
	if (!Number.isFinite(t) || t <= 0) throw new Error(`vm: bad timeoutSec ${t}`);
	if (opts.killWhen) {
		const { file, afterMs } = opts.killWhen;
		if (!/^[A-Za-z0-9._-]{1,64}$/.test(file) || file.startsWith('.')) {
			throw new Error(`vm: killWhen.file must be a plain file name, got ${JSON.stringify(file)}`);
		}
		if (!Number.isFinite(afterMs) || afterMs < 0) throw new Error(`vm: bad killWhen.afterMs ${afterMs}`);
	}
}

// Process groups of running VMs, killed if this process is interrupted, so a
// dying test never leaves a QEMU holding the VM lock.
const liveGroups = new Set<number>();
let handlersInstalled = false;
// Queue tickets of this process, removed on exit with the VMs.
const myTickets = new Set<string>();
function killLive(): void {
	for (const f of myTickets) fs.rmSync(f, { force: true });
	myTickets.clear();
	for (const pgid of liveGroups) {
		try {
			process.kill(-pgid, 'SIGKILL');
		} catch {
			// already gone
		}
	}
	liveGroups.clear();
}
/** Set once this process got SIGINT/SIGTERM/SIGHUP/SIGALRM: no new VM starts after that. */
let interrupted = false;
function installHandlers(): void {
	if (handlersInstalled) return;
	handlersInstalled = true;
	process.on('exit', killLive);
	// SIGALRM: what tap sends a test file that ran past its timeout.
	for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGALRM'] as const) {
		const onSig = (): void => {
			interrupted = true;
			killLive();
			// Die of the signal as we would have without this listener. Other
			// listeners (tap's signal-exit) ran already; with ours gone they
			// see the re-raised signal as unhandled and let the process die.
			process.off(sig, onSig);
			process.kill(process.pid, sig);
		};
		process.on(sig, onSig);
	}
}

function runDirName(name: string): string {
	const ts = new Date().toISOString().replace(/[:]/g, '').replace('T', '-').replace('Z', '');
	return `${name}-${ts}-${process.pid}`;
}

/** Kernel-problem lines from the console (printk lines only) and the guest's dmesg, deduplicated. */
export function findKernelProblems(consoleText: string, dmesgText: string): string[] {
	const seen = new Set<string>();
	const out: string[] = [];
	const add = (line: string): void => {
		const key = line.replace(PRINTK_TIME, '').trim();
		if (seen.has(key)) return;
		seen.add(key);
		out.push(line.trim());
	};
	for (const line of consoleText.split('\n')) {
		if (PRINTK_TIME.test(line) && KERNEL_PROBLEM.test(line)) add(line);
	}
	for (const line of dmesgText.split('\n')) {
		if (KERNEL_PROBLEM.test(line)) add(line);
	}
	return out;
}

/**
 * First come, first served among harness users. flock(1) alone is not fair:
 * with several test processes waiting, one can starve for many minutes (seen
 * here with 5 helpers). Each waiter drops a ticket named by arrival time and
 * pid into VM_QUEUE and goes on to flock only when its ticket is the oldest
 * live one; tickets of dead processes are discarded. QEMU users outside this
 * harness still just take the flock, so the lock remains the real exclusion.
 * Returns a function that gives the turn up.
 */
async function waitForTurn(): Promise<() => void> {
	fs.mkdirSync(VM_QUEUE, { recursive: true, mode: 0o1777 });
	ticketSeq++;
	const mine = `${String(Date.now()).padStart(15, '0')}-${process.pid}-${ticketSeq}`;
	const file = path.join(VM_QUEUE, mine);
	fs.writeFileSync(file, startTime(process.pid));
	myTickets.add(file);
	const release = (): void => {
		myTickets.delete(file);
		fs.rmSync(file, { force: true });
	};
	for (;;) {
		const live = fs
			.readdirSync(VM_QUEUE)
			.filter((n) => {
				const pid = Number(n.split('-')[1]);
				if (pid === process.pid || isOwnerAlive(pid, readOr(path.join(VM_QUEUE, n), ''))) return true;
				fs.rmSync(path.join(VM_QUEUE, n), { force: true });
				return false;
			})
			.sort();
		if (live[0] === mine || !live.includes(mine)) return release;
		await new Promise((r) => setTimeout(r, 300));
	}
}
let ticketSeq = 0;

/** A process's start time (clock ticks since boot), from /proc; '' if it is gone. */
function startTime(pid: number): string {
	const stat = readOr(`/proc/${pid}/stat`, '');
	// Field 22; the command name before it is in parentheses and may hold spaces.
	return stat.slice(stat.lastIndexOf(') ') + 2).split(' ')[19] ?? '';
}

/**
 * Whether a ticket's owner still runs: same pid and same start time, so a
 * reused pid does not hold the queue forever. An empty ticket comes from an
 * older harness that wrote none: pid liveness only.
 */
function isOwnerAlive(pid: number, ticketStart: string): boolean {
	if (ticketStart.trim() === '') return isAlive(pid);
	return startTime(pid) === ticketStart.trim();
}

function isAlive(pid: number): boolean {
	if (!Number.isInteger(pid) || pid <= 0) return false;
	try {
		process.kill(pid, 0);
		return true;
	} catch (e) {
		return (e as NodeJS.ErrnoException).code === 'EPERM';
	}
}

/** Run directories older than this are deleted when a new VM starts. */
const KEEP_RUNS_MS = 2 * 24 * 3600 * 1000;

function pruneOldRuns(): void {
	let names: string[];
	try {
		names = fs.readdirSync(RUNS_DIR);
	} catch {
		return;
	}
	const now = Date.now();
	for (const n of names) {
		const dir = path.join(RUNS_DIR, n);
		try {
			if (now - fs.statSync(dir).mtimeMs > KEEP_RUNS_MS) fs.rmSync(dir, { recursive: true, force: true });
		} catch {
			// another process pruned it first
		}
	}
}

function readOr(file: string, dflt: string): string {
	try {
		return fs.readFileSync(file, 'utf8');
	} catch {
		return dflt;
	}
}

export async function runInVm(opts: VmOptions): Promise<VmResult> {
	validate(opts);
	if (interrupted) throw new Error('vm: interrupted by a signal, not starting another VM');
	const kernel = guestKernel(opts.kernel);
	const { vmlinux, initramfs } = await prepareKernel(kernel);
	const timeoutSec = opts.timeoutSec ?? DEFAULT_TIMEOUT_SEC;

	pruneOldRuns();
	const outDir = path.join(RUNS_DIR, runDirName(opts.name ?? 'vm'));
	fs.mkdirSync(outDir, { recursive: true });
	// The guest sees this directory as /mnt/out (DMU_OUT); init runs run.sh.
	fs.writeFileSync(path.join(outDir, 'script.sh'), opts.script);
	fs.writeFileSync(
		path.join(outDir, 'env.sh'),
		Object.entries(opts.env ?? {})
			.map(([k, v]) => `export ${k}=${shQuote(v)}\n`)
			.join(''),
	);
	fs.writeFileSync(
		path.join(outDir, 'run.sh'),
		[
			'#!/bin/bash',
			'. /mnt/out/env.sh',
			`cd ${shQuote(REPO_ROOT)} || exit 99`,
			'exec /bin/bash /mnt/out/script.sh',
			'',
		].join('\n'),
	);

	const created: string[] = [];
	const driveArgs: string[] = [];
	(opts.disks ?? []).forEach((d, i) => {
		let file: string;
		let ro = false;
		if ('sizeMiB' in d) {
			file = path.join(outDir, `disk${i}.img`);
			fs.writeFileSync(file, startTime(process.pid));
			fs.truncateSync(file, d.sizeMiB * 1024 * 1024);
			created.push(file);
		} else {
			file = path.resolve(d.path);
			ro = d.readOnly === true;
		}
		driveArgs.push(
			'-drive',
			`file=${qemuEscape(file)},format=raw,if=virtio,cache=unsafe${ro ? ',readonly=on' : ''}`,
		);
	});

	const qemu = [
		'qemu-system-x86_64',
		...['-accel', 'tcg', '-cpu', 'max', '-smp', String(opts.cpus ?? 2), '-m', `${opts.memMiB ?? 2048}M`],
		...['-display', 'none', '-no-reboot', '-nodefaults', '-serial', 'stdio', '-monitor', 'none'],
		...['-kernel', vmlinux, '-initrd', initramfs],
		// loglevel=5: warnings reach the console, so a hung guest still shows them.
		...['-append', `console=ttyS0 panic=-1 loglevel=5 ${opts.clock === 'tsc' ? 'tsc=reliable clocksource=tsc' : 'tsc=unstable'} mitigations=off${opts.kernelArgs ? ` ${opts.kernelArgs}` : ''}`],
		// multidevs=remap: the host / spans several file systems (inode clashes otherwise).
		...['-fsdev', 'local,id=r,path=/,security_model=none,readonly=on,multidevs=remap'],
		...['-device', 'virtio-9p-pci,fsdev=r,mount_tag=hostroot'],
		...['-fsdev', `local,id=o,path=${qemuEscape(outDir)},security_model=none`],
		...['-device', 'virtio-9p-pci,fsdev=o,mount_tag=out'],
		...driveArgs,
	];
	installHandlers();
	const t0 = Date.now();
	let attempt = 1;
	let firstLockedAt: number | undefined;
	let boot: Booted;
	for (;;) {
		boot = await bootOnce(qemu, outDir, opts, timeoutSec);
		firstLockedAt ??= boot.lockedAt ?? t0;
		if (attempt >= BOOT_ATTEMPTS || interrupted || !bootCrashed(boot.consoleText)) break;
		const kept = path.join(outDir, `console-boot${attempt}.log`);
		fs.renameSync(path.join(outDir, 'console.log'), kept);
		process.stderr.write(`vm: ${opts.name ?? 'vm'}: the guest kernel died before the script started; booting again (first console: ${kept})\n`);
		attempt++;
	}
	const t1 = Date.now();
	for (const f of created) if (!opts.keepDisks) fs.rmSync(f, { force: true });

	const { consoleText } = boot;
	const dmesgText = readOr(path.join(outDir, 'dmesg.txt'), '');
	const codeText = readOr(path.join(outDir, 'exitcode'), '').trim();
	const exitCode = /^\d+$/.test(codeText) ? Number(codeText) : -1;
	// timeout exits 124 when it had to kill QEMU (137 if it was killed itself).
	const timedOut = exitCode === -1 && (boot.qemuExit === 124 || boot.qemuExit === 137);
	const started = /@@DMU script-start uptime=([\d.]+)/.exec(consoleText);
	return {
		exitCode,
		console: consoleText,
		outDir,
		kernelProblems: findKernelProblems(consoleText, dmesgText),
		durationMs: t1 - firstLockedAt,
		timedOut,
		killed: boot.killed,
		timing: {
			lockWaitMs: Math.max(0, firstLockedAt - t0),
			bootMs: started?.[1] ? Math.round(Number(started[1]) * 1000) : -1,
			bootAttempts: attempt,
		},
	};
}

interface Booted {
	consoleText: string;
	/** When the VM lock was taken, if it was. */
	lockedAt: number | undefined;
	/** Exit status of timeout(1) around QEMU. */
	qemuExit: number | undefined;
	killed: boolean;
}

/** One boot of the guest, in turn with every other harness user; console in outDir/console.log. */
async function bootOnce(qemu: readonly string[], outDir: string, opts: VmOptions, timeoutSec: number): Promise<Booted> {
	const startedFile = path.join(outDir, '.lock-acquired');
	const consoleFile = path.join(outDir, 'console.log');
	const verbose = Boolean(process.env.DMU_VM_VERBOSE);
	const releaseTurn = await waitForTurn();
	// flock LOCK sh -c '<note the time>; exec timeout ... qemu ...': the shell
	// text is constant, every value travels as an argument. timeout runs in
	// the foreground so the whole VM stays in our detached process group.
	const child = execa(
		'flock',
		[
			VM_LOCK,
			'sh',
			'-c',
			// If this test process died (SIGKILL) while we waited for the
			// lock, do not start a VM nobody waits for.
			'kill -0 "$1" 2>/dev/null || exit 125; date +%s%3N > "$0"; shift; exec "$@"',
			startedFile,
			String(process.pid),
			'timeout',
			'--foreground',
			'-s',
			'KILL',
			String(timeoutSec),
			...qemu,
		],
		{
			stdin: 'ignore',
			// DMU_VM_VERBOSE=1 also streams the console to our stderr (live debugging).
			stdout: verbose || opts.onLine ? [{ file: consoleFile }, 'pipe'] : { file: consoleFile },
			stderr: { file: path.join(outDir, 'qemu.stderr') },
			buffer: false,
			reject: false,
			detached: true,
		},
	);
	if (verbose) child.stdout?.pipe(process.stderr, { end: false });
	if (opts.onLine && child.stdout) {
		const onLine = opts.onLine;
		readline.createInterface({ input: child.stdout, crlfDelay: Number.POSITIVE_INFINITY }).on('line', (l) => onLine(l.replaceAll('\r', '')));
	}
	if (child.pid !== undefined) liveGroups.add(child.pid);
	const cut = opts.killWhen && child.pid !== undefined ? armKill(child.pid, path.join(outDir, opts.killWhen.file), opts.killWhen.afterMs) : undefined;
	let res: Awaited<typeof child>;
	try {
		res = await child;
	} finally {
		cut?.stop();
		releaseTurn();
		if (child.pid !== undefined) liveGroups.delete(child.pid);
	}
	return {
		consoleText: readOr(consoleFile, '').replaceAll('\r', ''),
		lockedAt: Number(readOr(startedFile, '').trim()) || undefined,
		qemuExit: res.exitCode,
		killed: cut?.killed() ?? false,
	};
}

/**
 * killWhen: poll for the marker file (the out share is 9p with cache=none, so
 * the guest's create reaches the host at once), then SIGKILL the VM's
 * process group `afterMs` later.
 */
function armKill(pgid: number, marker: string, afterMs: number): { stop(): void; killed(): boolean } {
	let killed = false;
	let timer: NodeJS.Timeout | undefined;
	const poll = setInterval(() => {
		if (!fs.existsSync(marker)) return;
		clearInterval(poll);
		timer = setTimeout(() => {
			try {
				process.kill(-pgid, 'SIGKILL');
				killed = true;
			} catch {
				// the VM ended first
			}
		}, afterMs);
	}, 10);
	return {
		stop() {
			clearInterval(poll);
			if (timer) clearTimeout(timer);
		},
		killed: () => killed,
	};
}

/** The part of a tap Test that vmCheck uses. */
export interface TapLike {
	ok(value: unknown, message: string): boolean;
	equal(found: unknown, wanted: unknown, message: string): boolean;
	same(found: unknown, wanted: unknown, message: string): boolean;
	comment(...args: unknown[]): void;
}

/** Last `n` lines of the console, for failure reports. */
export function consoleTail(r: VmResult, n = 60): string {
	return r.console.trimEnd().split('\n').slice(-n).join('\n');
}

/**
 * Assert a VM run went well: exit 0, no timeout, no kernel problem. On
 * failure the console tail is printed, with the run directory.
 */
export function vmCheck(t: TapLike, r: VmResult): boolean {
	const ok = [
		t.equal(r.timedOut, false, 'guest did not time out'),
		t.equal(r.exitCode, 0, 'guest script exited 0'),
		t.same(r.kernelProblems, [], 'no kernel problems in the log'),
	].every(Boolean);
	if (!ok) {
		const qemuErr = readOr(path.join(r.outDir, 'qemu.stderr'), '').trim();
		t.comment(
			`VM run ${r.outDir}, console tail:\n${consoleTail(r)}${qemuErr ? `\nqemu stderr:\n${qemuErr}` : ''}`,
		);
	}
	return ok;
}
