#!/usr/bin/env node
/**
 * What a mapped block costs the target per bio, against dm-linear over the
 * same device in the same VM, by rounds of the same I/Os alternating
 * between the two devices every few milliseconds (abio.c). Several builds
 * of dmu.ko can be compared in one VM. Prints the ratio per job and
 * build; not a timed test: there is no pass/fail threshold. See README.md.
 *
 *   npm run build && node dist/bench/hitcost/run.js [--disk null] [--variant floor norefs] [--module a.ko b.ko]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { execa } from 'execa';
import { runMain } from '../../src/cli/run.js';
import { DmuError } from '../../src/errors.js';
import { consoleTail, type GuestClock, REPO_ROOT, runInVm } from '../../test/support/vm.js';
import { blockSectorsFor, clockOption, diskOption, guestKernelFor, pick, positive } from '../options.js';
import { ensureModule } from '../scratch.js';
import { formatHitcost, HITCOST_JOBS, type HitcostRow, hitcostRow, parseRounds } from './report.js';

const VARIANTS_DIR = path.join(REPO_ROOT, 'bench/hitcost/variants');

function listVariants(): string[] {
	return fs
		.readdirSync(VARIANTS_DIR)
		.filter((f) => f.endsWith('.patch'))
		.map((f) => f.slice(0, -'.patch'.length));
}

const program = new Command('bench-hitcost')
	.description(
		'dmu target vs dm-linear on mapped blocks, by rounds of the same O_DIRECT I/Os alternating between the two every few ms: ' +
			'the target’s own cost per bio, with an interval 5-10 times narrower than fio pairs give. Over null_blk by default.',
	)
	.option('--kernel <series>', 'guest kernel series: 6.1 or 6.12', '6.12')
	.addOption(diskOption('null'))
	.option('--size-mib <n>', 'area measured (every block mapped first), MiB', positive('--size-mib'), 256)
	.option('--block-kib <n>', 'dmu block size, KiB (power of two)', positive('--block-kib'), 64)
	.option('--rounds <n>', 'rounds per job, module and pass', positive('--rounds'), 400)
	.option('--passes <n>', 'passes over the modules; even passes load them in reverse order', positive('--passes'), 2)
	.option('--jobs <names>', `comma-separated subset of: ${HITCOST_JOBS.map((j) => j.name).join(',')}`)
	.option('--module <files...>', 'dmu.ko builds to compare, each loaded in turn (default: kernel/build/<KVER>/dmu.ko)')
	.option(
		'--variant <names...>',
		`also measure these measurement-only builds: kernel/ with bench/hitcost/variants/<name>.patch applied (${listVariants().join(', ')})`,
	)
	.option('--cpus <n>', 'guest CPUs', positive('--cpus'), 2)
	.addOption(clockOption())
	.option('--out <file>', 'JSON results file (default bench/results/hitcost-<time>.json)')
	.showHelpAfterError()
	.exitOverride();

interface Opts {
	kernel: string;
	disk: string;
	sizeMib: number;
	blockKib: number;
	rounds: number;
	passes: number;
	jobs?: string;
	module?: string[];
	variant?: string[];
	cpus: number;
	clock: GuestClock;
	out?: string;
}

/** A copy of kernel/ with the variant's patch, built for `kver`: its dmu.ko. */
async function buildVariant(name: string, kver: string): Promise<string> {
	const patch = path.join(VARIANTS_DIR, `${name}.patch`);
	if (!fs.existsSync(patch)) throw new DmuError('DMU_ERR_BENCH_ARGS', `unknown variant "${name}" (one of ${listVariants().join(', ')})`);
	const dir = path.join(REPO_ROOT, '.cache/hitcost/variants', name);
	fs.rmSync(dir, { recursive: true, force: true });
	fs.cpSync(path.join(REPO_ROOT, 'kernel'), dir, { recursive: true, filter: (src) => path.basename(src) !== 'build' });
	const steps: [string, string[]][] = [
		['patch', ['-s', '-d', dir, '-p2', '-i', patch]],
		['make', ['-s', '-C', dir, `KVER=${kver}`]],
	];
	for (const [cmd, args] of steps) {
		const r = await execa(cmd, args, { reject: false, all: true });
		if (r.exitCode !== 0) {
			throw new DmuError('DMU_ERR_BENCH_BUILD', `variant ${name}: ${cmd} failed: ${(r.all ?? '').trim().split('\n').slice(-1)[0]}`);
		}
	}
	return path.join(dir, 'build', kver, 'dmu.ko');
}

/** abio, built for the guest (which runs the host's userland over 9p). */
async function buildAbio(): Promise<string> {
	const out = path.join(REPO_ROOT, '.cache/hitcost/abio');
	fs.mkdirSync(path.dirname(out), { recursive: true });
	const r = await execa('gcc', ['-O2', '-Wall', '-Wextra', '-o', out, path.join(REPO_ROOT, 'bench/hitcost/abio.c')], { reject: false, all: true });
	if (r.exitCode !== 0) throw new DmuError('DMU_ERR_BENCH_BUILD', `cannot build bench/hitcost/abio.c with gcc: ${(r.all ?? '').trim().split('\n')[0]}`);
	return out;
}

runMain('bench-hitcost', async () => {
	program.parse(process.argv);
	const o = program.opts<Opts>();
	const kernel = guestKernelFor(o.kernel);
	const blockSectors = blockSectorsFor(o.blockKib, 1, 8192);
	if ((o.sizeMib * 1024) % o.blockKib !== 0) throw new DmuError('DMU_ERR_BENCH_ARGS', '--size-mib must be a whole number of blocks');
	const jobs = pick(HITCOST_JOBS, o.jobs, 'job');
	// Each build with the name its rows carry.
	const builds: { label: string; ko: string }[] = o.module?.length
		? o.module.map((m, i) => ({ label: `${i}: ${m}`, ko: path.resolve(m) }))
		: [{ label: 'kernel/build', ko: await ensureModule(kernel.kver) }];
	for (const v of o.variant ?? []) builds.push({ label: v, ko: await buildVariant(v, kernel.kver) });
	const modules = builds.map((b) => b.ko);
	for (const m of modules) if (!fs.existsSync(m)) throw new DmuError('DMU_ERR_BENCH_MODULE', `no such module: ${m}`);
	if (!fs.existsSync(path.join(REPO_ROOT, 'dist/test/support/responder-cli.js'))) {
		throw new DmuError('DMU_ERR_BENCH_BUILD', 'dist/test/support/responder-cli.js is missing: run npm run build');
	}
	const abio = await buildAbio();

	process.stdout.write(
		`bench-hitcost: ${kernel.kver}, ${o.disk} disk, ${o.sizeMib} MiB, ${o.blockKib} KiB blocks, ${modules.length} module(s) x ${o.passes} passes x ` +
			`${jobs.length} jobs x ${o.rounds} rounds, ${o.cpus} CPUs, clock ${o.clock}; host load ${os.loadavg()[0]!.toFixed(2)} (run with nothing else on the machine)\n`,
	);
	const r = await runInVm({
		kernel: kernel.series,
		name: 'bench-hitcost',
		script: fs.readFileSync(path.join(REPO_ROOT, 'bench/hitcost/guest.sh'), 'utf8'),
		disks: o.disk === 'virtio' ? [{ sizeMiB: o.sizeMib }] : [],
		cpus: o.cpus,
		clock: o.clock,
		// TCG: 1 MiB over null_blk about 0.1 ms, over virtio a few ms.
		timeoutSec: 300 + modules.length * o.passes * jobs.length * o.rounds * (o.disk === 'virtio' ? 0.5 : 0.05),
		env: {
			MODULES: modules.join(' '),
			SIZE_MIB: String(o.sizeMib),
			BLOCK_SECTORS: String(blockSectors),
			JOBS: jobs.map((j) => `${j.name}:${j.rw}:${j.bytes}:${j.perRound}:${j.order}`).join(' '),
			ROUNDS: String(o.rounds),
			PASSES: String(o.passes),
			ABIO: abio,
			DISK: o.disk,
		},
	});
	if (r.kernelProblems.length > 0) process.stderr.write(`bench-hitcost: kernel problems:\n${r.kernelProblems.join('\n')}\n`);
	if (r.exitCode !== 0) {
		process.stderr.write(`${consoleTail(r, 40)}\n`);
		throw new DmuError('DMU_ERR_BENCH_VM', `guest script failed (${r.timedOut ? 'timeout' : `exit ${r.exitCode}`}); run directory ${r.outDir}`);
	}

	const rows: HitcostRow[] = [];
	for (const j of jobs) {
		for (const [i, build] of builds.entries()) {
			const perPass = Array.from({ length: o.passes }, (_, p) =>
				parseRounds(fs.readFileSync(path.join(r.outDir, `rounds-${p + 1}-${i}-${j.name}.txt`), 'utf8')),
			);
			rows.push(hitcostRow(j.name, build.label, perPass));
		}
	}
	process.stdout.write(`\n${formatHitcost(rows)}\n\nVM ${Math.round(r.durationMs / 1000)} s, run directory ${r.outDir}\n`);

	const out = o.out ?? path.join(REPO_ROOT, 'bench/results', `hitcost-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
	fs.mkdirSync(path.dirname(out), { recursive: true });
	fs.writeFileSync(out, `${JSON.stringify({ kernel: kernel.kver, modules, options: o, rows, vmMs: r.durationMs, runDir: r.outDir }, null, '\t')}\n`);
	process.stdout.write(`results: ${out}\n`);
});
