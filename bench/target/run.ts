#!/usr/bin/env node
/**
 * Issue-3 benchmark: the dm-userspace target's hit path against dm-linear
 * over the same backing device, measured in one VM run (so both see the
 * same emulated machine). Prints the ratio dmu / dm-linear per fio job.
 * Not a timed test: there is no pass/fail threshold. See README.md.
 *
 *   npm run build && node dist/bench/target/run.js [--kernel 6.1] [--repeat 3]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { runMain } from '../../src/cli/run.js';
import { DmuError } from '../../src/errors.js';
import { consoleTail, type GuestClock, REPO_ROOT, runInVm } from '../../test/support/vm.js';
import { blockSectorsFor, clockOption, diskOption, guestKernelFor, pick, positive } from '../options.js';
import { ensureModule } from '../scratch.js';
import { JOBS, formatTable, parseFio, type Row, responderStats, row } from './report.js';

const program = new Command('bench-target')
	.description('dmu target vs dm-linear (same device, same VM run): fio sequential 1 MiB and random 4 KiB, read and write, after every block is mapped')
	.option('--kernel <series>', 'guest kernel series: 6.1 or 6.12', '6.12')
	.option('--size-mib <n>', 'area measured (and prewarmed), MiB', positive('--size-mib'), 256)
	.option('--block-kib <n>', 'dmu block size, KiB (power of two)', positive('--block-kib'), 64)
	.option('--runtime <s>', 'fio time per run, seconds', positive('--runtime'), 2)
	.option('--ramp <s>', 'fio ramp time excluded from the numbers, seconds', positive('--ramp'), 1)
	.option('--repeat <n>', 'pairs of runs (dm-linear, dmu) per job; the order alternates', positive('--repeat'), 10)
	.option('--iodepth <n>', 'fio libaio queue depth', positive('--iodepth'), 16)
	.option('--cpus <n>', 'guest CPUs', positive('--cpus'), 2)
	.addOption(diskOption('virtio'))
	.addOption(clockOption())
	.option('--jobs <names>', `comma-separated subset of: ${JOBS.map((j) => j.name).join(',')}`)
	.option('--build', 'run make -C kernel KVER=... first (default: only when dmu.ko is missing)')
	.option('--module <file>', 'load this dmu.ko instead of kernel/build/<KVER>/dmu.ko (an A/B of two builds)')
	.option('--out <file>', 'JSON results file (default bench/results/target-<time>.json)')
	.showHelpAfterError()
	.exitOverride();

interface Opts {
	kernel: string;
	sizeMib: number;
	blockKib: number;
	runtime: number;
	ramp: number;
	repeat: number;
	iodepth: number;
	cpus: number;
	disk: string;
	clock: GuestClock;
	jobs?: string;
	build?: boolean;
	module?: string;
	out?: string;
}

runMain('bench-target', async () => {
	program.parse(process.argv);
	const o = program.opts<Opts>();
	const kernel = guestKernelFor(o.kernel);
	const blockSectors = blockSectorsFor(o.blockKib, 1, 8192);
	if ((o.sizeMib * 1024) % o.blockKib !== 0) throw new DmuError('DMU_ERR_BENCH_ARGS', '--size-mib must be a whole number of blocks');
	const jobs = pick(JOBS, o.jobs, 'job');
	const ko = o.module ? path.resolve(o.module) : await ensureModule(kernel.kver, o.build === true);
	if (!fs.existsSync(ko)) throw new DmuError('DMU_ERR_BENCH_MODULE', `no such module: ${ko}`);
	if (!fs.existsSync(path.join(REPO_ROOT, 'dist/test/support/responder-cli.js'))) {
		throw new DmuError('DMU_ERR_BENCH_BUILD', 'dist/test/support/responder-cli.js is missing: run npm run build');
	}

	const perRun = o.runtime + o.ramp + 2; // + job start-up under TCG
	const timeoutSec = 300 + jobs.length * (10 + o.repeat * 2 * perRun);
	process.stdout.write(
		`bench-target: ${kernel.kver}, ${o.sizeMib} MiB, ${o.blockKib} KiB blocks, ${o.cpus} CPUs, ${o.disk} disk, clock ${o.clock}, ${jobs.length} jobs x ${o.repeat} x 2 devices x ${o.runtime} s; ` +
			`host load ${os.loadavg()[0]!.toFixed(2)} (run with nothing else on the machine)\n`,
	);
	const r = await runInVm({
		kernel: kernel.series,
		name: 'bench-target',
		script: fs.readFileSync(path.join(REPO_ROOT, 'bench/target/guest.sh'), 'utf8'),
		disks: [{ sizeMiB: o.sizeMib }],
		cpus: o.cpus,
		clock: o.clock,
		timeoutSec,
		env: {
			SIZE_MIB: String(o.sizeMib),
			BLOCK_SECTORS: String(blockSectors),
			RUNTIME: String(o.runtime),
			RAMP: String(o.ramp),
			REPEAT: String(o.repeat),
			IODEPTH: String(o.iodepth),
			JOBS: jobs.map((j) => `${j.name}:${j.rw}:${j.bs}`).join(' '),
			DMU_KO: ko,
			DISK: o.disk,
		},
	});
	if (r.kernelProblems.length > 0) process.stderr.write(`bench-target: kernel problems:\n${r.kernelProblems.join('\n')}\n`);
	if (r.exitCode !== 0) {
		process.stderr.write(`${consoleTail(r, 40)}\n`);
		throw new DmuError(
			'DMU_ERR_BENCH_VM',
			`guest script failed (${r.timedOut ? 'timeout' : `exit ${r.exitCode}`}); run directory ${r.outDir}`,
		);
	}

	const read = (f: string) => fs.readFileSync(path.join(r.outDir, f), 'utf8');
	const rows: Row[] = jobs.map((j) => {
		const text = read(`fio-${j.name}.json`);
		const side = (dev: string) => Array.from({ length: o.repeat }, (_, i) => parseFio(text, j.rw, `${dev}.${i + 1}`));
		return row(j, side('lin'), side('dmu'));
	});
	const stats = responderStats(read('responder.jsonl'), Number(read('log-lines-prewarm').trim()));
	const blocks = (o.sizeMib * 1024) / o.blockKib;

	process.stdout.write(`\n${formatTable(rows)}\n\n`);
	process.stdout.write(
		`prewarm: ${blocks} blocks in ${read('prewarm-ms').trim()} ms, ${stats.prewarmMaps} MAP requests ` +
			`(${stats.batches} reads, largest batch ${stats.maxBatch})\n` +
			`MAP requests during measurement: ${stats.measureMaps}${stats.measureMaps === 0 ? ' (hit path only)' : ' (misses: mappings were evicted or not all blocks were prewarmed)'}\n` +
			`dmsetup status after prewarm: ${read('status-prewarm.txt').trim()}\n` +
			`dmsetup status at the end:    ${read('status-end.txt').trim()}\n` +
			`VM ${Math.round(r.durationMs / 1000)} s, run directory ${r.outDir}\n`,
	);

	const out = o.out ?? path.join(REPO_ROOT, 'bench/results', `target-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
	fs.mkdirSync(path.dirname(out), { recursive: true });
	fs.writeFileSync(
		out,
		`${JSON.stringify(
			{
				kernel: kernel.kver,
				module: ko,
				options: o,
				rows: rows.map((x) => ({ job: x.job, lin: x.lin, dmu: x.dmu, ratio: x.ratio, ratios: x.ratios, cpuRatio: x.cpuRatio, repMean: x.repMean, ci95: x.ci95 })),
				responder: stats,
				blocks,
				prewarmMs: Number(read('prewarm-ms').trim()),
				statusPrewarm: read('status-prewarm.txt').trim(),
				statusEnd: read('status-end.txt').trim(),
				vmMs: r.durationMs,
				runDir: r.outDir,
			},
			null,
			'\t',
		)}\n`,
	);
	process.stdout.write(`results: ${out}\n`);
});
