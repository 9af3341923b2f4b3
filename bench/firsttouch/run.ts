#!/usr/bin/env node
/**
 * Issue-4 benchmark, first touch: dmu+dscow against dm-snapshot on first
 * writes and against dm-linear on cold reads and on warm reads and writes
 * (blocks already copied), all three live over the same base in one VM
 * run, measured as pairs of runs that alternate their order.
 * bench/suite runs one system after the other, and its cold runs of 16 MiB
 * last 30-100 ms: a host hiccup moved one system's median by 10x. Pairs
 * put both runs of a comparison at the same moment of the emulated
 * machine, and the interval says whether a difference is more than noise.
 * Not a timed test. See README.md.
 *
 *   npm run build && node dist/bench/firsttouch/run.js [--repeat 10] [--jobs seq-write]
 *   node dist/bench/firsttouch/run.js --pool RESULTS.json RESULTS.json ...
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { runMain } from '../../src/cli/run.js';
import { DmuError } from '../../src/errors.js';
import { consoleTail, type GuestClock, REPO_ROOT, runInVm } from '../../test/support/vm.js';
import { blockSectorsFor, clockOption, guestKernelFor, pick, positive } from '../options.js';
import { ensureModule, makeScratchDisk, scratchDir } from '../scratch.js';
import {
	type DiskRates,
	FIRST_TOUCH_JOBS,
	formatCeiling,
	formatPairs,
	type PairRow,
	pairRow,
	parseDiskRates,
	parseTicks,
	pool,
	regionsNeeded,
} from './report.js';

const program = new Command('bench-firsttouch')
	.description(
		'dmu+dscow first writes against dm-snapshot, cold reads and warm (already copied) reads and writes against dm-linear: ' +
			'all over one base in one VM, pairs of runs in alternating order, the mean ratio with its 95% interval',
	)
	.option('--kernel <series>', 'guest kernel series: 6.1 or 6.12', '6.12')
	.option('--region-mib <n>', 'never-written area of one cold write run, MiB', positive('--region-mib'), 16)
	.option('--block-kib <n>', 'CoW block of both systems (dscow block, dm-snapshot chunk), KiB', positive('--block-kib'), 64)
	.option('--runtime <s>', 'cap of one cold run (random writes reach it), seconds', positive('--runtime'), 2)
	.option('--repeat <n>', 'pairs of runs per cold job; the order alternates', positive('--repeat'), 10)
	.option('--warm-runtime-ms <ms>', 'length of one warm run, milliseconds', positive('--warm-runtime-ms'), 250)
	.option('--warm-repeat <n>', 'pairs of runs per warm job (default 8 x --repeat: short runs, many pairs)', positive('--warm-repeat'))
	.option('--cpus <n>', 'guest CPUs', positive('--cpus'), 2)
	.addOption(clockOption())
	.option('--jobs <names>', `comma-separated subset of: ${FIRST_TOUCH_JOBS.map((j) => j.name).join(',')}`)
	.option('--out <file>', 'JSON results file (default bench/results/firsttouch-<time>.json)')
	.option('--pool <files...>', 'no VM: pool the pairs of earlier results files into one table')
	.showHelpAfterError()
	.exitOverride();

interface Opts {
	kernel: string;
	regionMib: number;
	blockKib: number;
	runtime: number;
	repeat: number;
	warmRuntimeMs: number;
	warmRepeat?: number;
	cpus: number;
	clock: GuestClock;
	jobs?: string;
	out?: string;
	pool?: string[];
}

/** What a results file holds: enough to pool runs later. */
interface Results {
	kernel: string;
	options: Opts;
	rows: PairRow[];
	/** The disk's own rates at depth 32, when rand-write-qd32 ran. */
	disk?: DiskRates;
	status: { dscow: string; snapshot: string };
	check: string;
	vmMs: number;
	runDir: string;
}

function poolFiles(files: string[]): void {
	const runs = files.map((f) => {
		let r: Results;
		try {
			r = JSON.parse(fs.readFileSync(f, 'utf8')) as Results;
		} catch (e) {
			throw new DmuError('DMU_ERR_BENCH_ARGS', `--pool ${f}: ${(e as Error).message}`);
		}
		if (!Array.isArray(r.rows)) throw new DmuError('DMU_ERR_BENCH_ARGS', `--pool ${f}: not a bench/firsttouch results file`);
		return r.rows;
	});
	process.stdout.write(`${files.length} runs pooled\n\n${formatPairs(pool(runs))}\n`);
}

runMain('bench-firsttouch', async () => {
	program.parse(process.argv);
	const o = program.opts<Opts>();
	if (o.pool) return poolFiles(o.pool);
	const kernel = guestKernelFor(o.kernel);
	const blockSectors = blockSectorsFor(o.blockKib, 4, 2048);
	if ((o.regionMib * 1024) % o.blockKib !== 0) throw new DmuError('DMU_ERR_BENCH_ARGS', '--region-mib must be a whole number of blocks');
	const jobs = pick(FIRST_TOUCH_JOBS, o.jobs, 'job');
	o.warmRepeat ??= 8 * o.repeat;
	const warmRepeat = o.warmRepeat;
	const pairsOf = (j: { warm?: boolean }) => (j.warm ? warmRepeat : o.repeat);
	await ensureModule(kernel.kver);
	for (const f of ['dist/bin/cowd.mjs', 'dist/bin/dscow_tool.mjs', 'dist/bin/dmu.mjs']) {
		if (!fs.existsSync(path.join(REPO_ROOT, f))) throw new DmuError('DMU_ERR_BENCH_BUILD', `${f} is missing: run npm run build`);
	}

	const baseMib = regionsNeeded(jobs, o.repeat) * o.regionMib;
	// dscow on a device wants room for every block of the base, plus its header and bitmaps.
	const cowMib = baseMib + 64;
	const tmp = scratchDir('dmu-firsttouch-');
	const disk = path.join(tmp, 'scratch.img');
	try {
		// The base, the two CoW areas, and a region the disk-rate runs write.
		await makeScratchDisk(disk, baseMib, baseMib + 2 * cowMib + o.regionMib);
		// What the disk alone allows is worked out for random first writes at depth 32.
		const ceilingJob = jobs.find((j) => j.name === 'rand-write-qd32');
		// A run costs its length plus fio's start of a job under TCG.
		const timeoutSec =
			300 + jobs.reduce((s, j) => s + 10 + pairsOf(j) * 2 * (j.warm ? o.warmRuntimeMs / 1000 + 1 : o.runtime + 3), 0);
		process.stdout.write(
			`bench-firsttouch: ${kernel.kver}, ${jobs.length} jobs (cold: ${o.repeat} pairs, ${o.runtime} s cap; warm: ${warmRepeat} pairs of ${o.warmRuntimeMs} ms), ${o.regionMib} MiB regions, ${o.blockKib} KiB blocks, ` +
				`${o.cpus} CPUs, clock ${o.clock}, base ${baseMib} MiB; host load ${os.loadavg()[0]!.toFixed(2)} (run with nothing else on the machine)\n`,
		);
		const r = await runInVm({
			kernel: kernel.series,
			name: 'bench-firsttouch',
			script: fs.readFileSync(path.join(REPO_ROOT, 'bench/firsttouch/guest.sh'), 'utf8'),
			disks: [{ path: disk }],
			memMiB: 2048,
			cpus: o.cpus,
			clock: o.clock,
			timeoutSec,
			onLine: (line) => {
				if (line.startsWith('bench: ')) process.stdout.write(`${line}\n`);
			},
			env: {
				BASE_MIB: String(baseMib),
				COW_MIB: String(cowMib),
				REGION_MIB: String(o.regionMib),
				BLOCK_SECTORS: String(blockSectors),
				RUNTIME: String(o.runtime),
				REPEAT: String(o.repeat),
				WARM_RUNTIME_MS: String(o.warmRuntimeMs),
				WARM_REPEAT: String(warmRepeat),
				JOBS: jobs.map((j) => `${j.name}:${j.rw}:${j.bs}:${j.iodepth}:${j.peer}:${j.warm ? 'warm' : 'cold'}`).join(' '),
				DISK_RATES: ceilingJob ? '1' : '0',
			},
		});
		if (r.kernelProblems.length > 0) process.stderr.write(`bench-firsttouch: kernel problems:\n${r.kernelProblems.join('\n')}\n`);
		if (r.exitCode !== 0) {
			process.stderr.write(`${consoleTail(r, 40)}\n`);
			throw new DmuError('DMU_ERR_BENCH_VM', `guest script failed (${r.timedOut ? 'timeout' : `exit ${r.exitCode}`}); run directory ${r.outDir}`);
		}
		const read = (f: string) => fs.readFileSync(path.join(r.outDir, f), 'utf8');
		const ticks = parseTicks(read('cowd-ticks.txt'));
		const rows = jobs.map((j) => pairRow(j, read(`fio-${j.name}.json`), pairsOf(j), ticks.get(j.name) ?? Number.NaN));
		const diskRates = ceilingJob ? parseDiskRates(read('disk-rates.json')) : undefined;
		const ceilingRow = rows.find((x) => x.job === ceilingJob?.name);
		const res: Results = {
			kernel: kernel.kver,
			options: o,
			rows,
			disk: diskRates,
			status: { dscow: read('status-dscow.txt').trim(), snapshot: read('status-snapshot.txt').trim() },
			check: read('check.txt').trim(),
			vmMs: r.durationMs,
			runDir: r.outDir,
		};
		process.stdout.write(
			`\n${formatPairs(rows, jobs)}\n\n` +
				(diskRates && ceilingRow ? `${formatCeiling(diskRates, ceilingRow, o.regionMib * 1048576, o.blockKib * 1024)}\n` : '') +
				`cowd CPU: over each whole job (dscow's runs only need it; TCG time)\n` +
				`dmsetup status b-dscow: ${res.status.dscow}\n` +
				`dmu check of the dscow image afterwards: ${res.check.split('\n').slice(-1)[0]}\n` +
				`VM ${Math.round(r.durationMs / 1000)} s, run directory ${r.outDir}\n`,
		);
		const out = o.out ?? path.join(REPO_ROOT, 'bench/results', `firsttouch-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
		fs.mkdirSync(path.dirname(out), { recursive: true });
		fs.writeFileSync(out, `${JSON.stringify(res, null, '\t')}\n`);
		process.stdout.write(`results: ${out}\n`);
	} finally {
		fs.rmSync(tmp, { recursive: true, force: true });
	}
});
