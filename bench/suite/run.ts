#!/usr/bin/env node
/**
 * The benchmark suite (issue 7): dmu against its peers, in ONE VM boot, on
 * the same virtio scratch disk and the same base image. Systems: dm-linear
 * (the limit), dm-snapshot, dm-thin with an external origin, dmu+dscow,
 * dmu+qcow2, qemu-nbd (qcow2 overlay, kernel nbd client), nbdkit's cow
 * filter (kernel nbd client). Writes JSON, Markdown and SVG charts to
 * bench/results/<time>/ and prints the Markdown. Exits non-zero when a peer
 * could not be set up. See bench/README.md.
 *
 *   npm run build && node dist/bench/suite/run.js [--runtime 2] [--repeat 3]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { execa } from 'execa';
import { runMain } from '../../src/cli/run.js';
import { DmuError } from '../../src/errors.js';
import { consoleTail, type GuestClock, type GuestKernel, REPO_ROOT, runInVm, type VmResult } from '../../test/support/vm.js';
import { blockSectorsFor, clockOption, guestKernelFor, pick, positive } from '../options.js';
import { ensureModule, makeScratchDisk, scratchDir } from '../scratch.js';
import { collectSystem, markdown, SUITE_JOBS, type SuiteJob, type SuiteResults, SYSTEMS, type SystemSpec, svgChart } from './report.js';

const program = new Command('bench')
	.description(
		'dmu against its peers (dm-linear, dm-snapshot, dm-thin, qemu-nbd, nbdkit cow) in one VM boot: ' +
			'fio cold (first touch) and warm, time to first byte, cowd MAP requests/s, cowd RSS for 1 TiB',
	)
	.option('--kernel <series>', 'guest kernel series: 6.1 or 6.12', '6.1')
	.option('--base-mib <n>', 'base image size, MiB (random data)', positive('--base-mib'), 512)
	.option('--region-mib <n>', 'never-touched area each cold run gets, MiB', positive('--region-mib'), 16)
	.option('--block-kib <n>', 'CoW block size of every system, KiB', positive('--block-kib'), 64)
	.option('--runtime <s>', 'fio seconds per run (cap of cold runs)', positive('--runtime'), 2)
	.option('--repeat <n>', 'repetitions per measurement (medians reported)', positive('--repeat'), 3)
	.option(
		'--systems <ids>',
		`comma-separated subset of: ${SYSTEMS.map((s) => s.id).join(',')} ` +
			`(default: all but ${SYSTEMS.filter((s) => s.onlyIfAsked).map((s) => s.id).join(',')})`,
	)
	.option('--jobs <names>', `comma-separated subset of: ${SUITE_JOBS.map((j) => j.name).join(',')}`)
	.addOption(clockOption())
	.option('--out <dir>', 'results folder (default bench/results/<time>/)')
	.option('--from <runDir>', 'no VM: report again from the guest files of an earlier run (its raw/ folder or .cache/vm-runs/...)')
	.addHelpText(
		'after',
		'\nTargets printed with PASS/MISS (dmu+dscow): warm >= 0.95x dm-linear; first-touch write >= 1.0x dm-snapshot\n' +
			'and >= 2x qemu-nbd; cold read >= 0.9x dm-linear. Exit 1 when a system could not be set up or measured.\n',
	)
	.showHelpAfterError()
	.exitOverride();

interface Opts {
	kernel: string;
	baseMib: number;
	regionMib: number;
	blockKib: number;
	runtime: number;
	repeat: number;
	systems?: string;
	jobs?: string;
	clock: GuestClock;
	out?: string;
	from?: string;
}

/** The scratch disk: the base (random data) first, then room for CoW areas and image files. */
async function makeDisk(file: string, baseMib: number): Promise<number> {
	const totalMib = baseMib + 640 + 1024;
	await makeScratchDisk(file, baseMib, totalMib);
	return totalMib;
}

/** Minutes and seconds since @t0, as 12m05s. */
function elapsed(t0: number): string {
	const s = Math.round((Date.now() - t0) / 1000);
	return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

/** Make the scratch disk and run the guest script in one VM boot. */
async function boot(o: Opts, kernel: GuestKernel, systems: SystemSpec[], jobs: SuiteJob[], disk: string): Promise<VmResult> {
	const totalMib = await makeDisk(disk, o.baseMib);
	const perSystem = jobs.length * o.repeat * 2 * (o.runtime + 8) + (o.repeat + 1) * (o.runtime + 8) + 60;
	const timeoutSec = 240 + systems.length * perSystem + 120;
	const t0 = Date.now();
	process.stdout.write(
		`bench: ${kernel.kver}, ${systems.map((s) => s.label).join(', ')}; ${jobs.length} jobs x cold/warm x ${o.repeat}, ` +
			`${o.runtime} s each, ${o.regionMib} MiB regions, ${o.blockKib} KiB blocks, ${totalMib} MiB scratch disk, clock ${o.clock}; ` +
			`host load ${os.loadavg()[0]!.toFixed(2)}; VM bound ${timeoutSec} s\n`,
	);
	return runInVm({
		kernel: kernel.series,
		name: 'bench-suite',
		script: fs.readFileSync(path.join(REPO_ROOT, 'bench/suite/guest.sh'), 'utf8'),
		disks: [{ path: disk }],
		memMiB: 2048,
		clock: o.clock,
		timeoutSec,
		// The guest script's progress lines, with the time since this run began.
		onLine: (line) => {
			if (line.startsWith('bench: ')) process.stdout.write(`${line} (${elapsed(t0)})\n`);
		},
		env: {
			BASE_MIB: String(o.baseMib),
			REGION_MIB: String(o.regionMib),
			BLOCK_SECTORS: String(o.blockKib * 2),
			RUNTIME: String(o.runtime),
			REPEAT: String(o.repeat),
			JOBS: jobs.map((j) => `${j.name}:${j.rw}:${j.bs}:${j.iodepth}`).join(' '),
			SYSTEMS: systems.map((s) => s.id).join(' '),
		},
	});
}

/** The guest files of an earlier run, as if the VM had just finished. */
function fromRunDir(dir: string): VmResult {
	if (!fs.existsSync(dir) || !fs.readdirSync(dir).some((f) => f.startsWith('setup-'))) {
		throw new DmuError('DMU_ERR_BENCH_ARGS', `--from ${dir}: no guest files of a bench run there`);
	}
	return { exitCode: 0, console: '', outDir: dir, kernelProblems: [], durationMs: 0, timedOut: false, timing: { lockWaitMs: 0, bootMs: -1, bootAttempts: 0 } };
}

runMain('bench', async () => {
	program.parse(process.argv);
	const o = program.opts<Opts>();
	const kernel = guestKernelFor(o.kernel);
	blockSectorsFor(o.blockKib, 4, 2048);
	const systems = pick(SYSTEMS, o.systems, 'system');
	const jobs = pick(SUITE_JOBS, o.jobs, 'job');
	// Every cold run, the time-to-first-byte reads and the MAP-rate runs get their own never-touched region.
	const regions = jobs.length * o.repeat + 1 + o.repeat;
	if (regions * o.regionMib > o.baseMib) {
		throw new DmuError('DMU_ERR_BENCH_ARGS', `--base-mib must be at least ${regions * o.regionMib} (${regions} regions of ${o.regionMib} MiB)`);
	}
	await ensureModule(kernel.kver);
	for (const f of ['dist/bin/cowd.mjs', 'dist/bin/dscow_tool.mjs']) {
		if (!fs.existsSync(path.join(REPO_ROOT, f))) throw new DmuError('DMU_ERR_BENCH_BUILD', `${f} is missing: run npm run build`);
	}
	for (const tool of ['fio', 'qemu-nbd', 'qemu-img', 'nbdkit', 'nbd-client']) {
		const r = await execa('sh', ['-c', `command -v ${tool}`], { reject: false });
		if (r.exitCode !== 0) throw new DmuError('DMU_ERR_BENCH_TOOL', `${tool} is not installed (run .ci/install-deps)`);
	}

	const startedAt = new Date().toISOString();
	const outDir = o.out ?? path.join(REPO_ROOT, 'bench/results', startedAt.replace(/[:.]/g, '-'));
	fs.mkdirSync(outDir, { recursive: true });
	const tmp = scratchDir('dmu-bench-');
	const disk = path.join(tmp, 'scratch.img');
	try {
		const r = o.from ? fromRunDir(o.from) : await boot(o, kernel, systems, jobs, disk);
		if (r.kernelProblems.length > 0) process.stderr.write(`bench: kernel problems:\n${r.kernelProblems.join('\n')}\n`);
		const read = (f: string) => {
			const p = path.join(r.outDir, f);
			return fs.existsSync(p) ? fs.readFileSync(p, 'utf8') : undefined;
		};
		if (r.exitCode !== 0) {
			process.stderr.write(`${consoleTail(r, 40)}\n`);
			process.stderr.write(`bench: guest script failed (${r.timedOut ? 'timeout' : `exit ${r.exitCode}`}); partial results follow\n`);
		}
		const res: SuiteResults = {
			kernel: kernel.kver,
			startedAt,
			options: { ...o },
			systems: systems.map((s) => collectSystem(s, jobs, o.repeat, read)),
			vmMs: r.durationMs,
			runDir: r.outDir,
		};
		const idle = read('rss-idle.txt');
		const load = read('rss-load.txt');
		if (idle !== undefined && load !== undefined) res.rssKiB = { idle: Number(idle.trim()), load: Number(load.trim()) };
		else if (systems.some((s) => s.id === 'dscow')) res.rssFailed = read('setup-failed-rss.txt')?.trim() ?? 'not measured';

		const md = markdown(res, jobs);
		fs.writeFileSync(path.join(outDir, 'results.json'), `${JSON.stringify(res, null, '\t')}\n`);
		fs.writeFileSync(path.join(outDir, 'results.md'), md);
		for (const j of jobs) fs.writeFileSync(path.join(outDir, `${j.name}.svg`), svgChart(res, j));
		// The raw guest output, so every number can be traced to its fio file.
		fs.cpSync(r.outDir, path.join(outDir, 'raw'), { recursive: true });
		process.stdout.write(`\n${md}\nVM ${Math.round(r.durationMs / 1000)} s; results in ${outDir}\n`);

		const failed = res.systems.filter((s) => s.failed);
		if (r.exitCode !== 0) throw new DmuError('DMU_ERR_BENCH_VM', `guest script failed; run directory ${r.outDir}`);
		if (failed.length > 0) {
			throw new DmuError('DMU_ERR_BENCH_SETUP', `could not set up or measure: ${failed.map((s) => `${s.label} (${s.failed})`).join('; ')}`);
		}
		if (res.rssFailed) throw new DmuError('DMU_ERR_BENCH_SETUP', `cowd RSS not measured: ${res.rssFailed}`);
	} finally {
		fs.rmSync(tmp, { recursive: true, force: true });
	}
});
