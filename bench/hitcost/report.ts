/**
 * bench/hitcost: the host side of reading abio's rounds. A round is the
 * same I/Os timed on dm-linear, then on dmu (or the other way round); its
 * ratio is dm-linear's time over dmu's, so 1 means dmu is as fast and 0.9
 * that it does 90% of dm-linear's I/Os in the same time.
 */
import { meanCi95 } from '../target/report.js';

export interface HitcostJob {
	name: string;
	rw: 'read' | 'write';
	bytes: number;
	/** I/Os on each device per round: a round should last a few ms under TCG. */
	perRound: number;
	order: 'seq' | 'rand';
}

export const HITCOST_JOBS: readonly HitcostJob[] = [
	{ name: 'rand-read-4k', rw: 'read', bytes: 4096, perRound: 200, order: 'rand' },
	{ name: 'rand-write-4k', rw: 'write', bytes: 4096, perRound: 200, order: 'rand' },
	{ name: 'seq-read-1m', rw: 'read', bytes: 1 << 20, perRound: 20, order: 'seq' },
	{ name: 'seq-write-1m', rw: 'write', bytes: 1 << 20, perRound: 20, order: 'seq' },
];

/** The ratios (dm-linear seconds / dmu seconds) of abio's output, a round per line. */
export function parseRounds(text: string): number[] {
	const out: number[] = [];
	for (const [i, line] of text.split('\n').entries()) {
		if (line.trim() === '') continue;
		const f = line.trim().split(/\s+/).map(Number);
		if (f.length !== 2 || !f.every((x) => Number.isFinite(x) && x > 0)) {
			throw new Error(`abio output line ${i + 1} is not two positive times: "${line}"`);
		}
		out.push(f[0]! / f[1]!);
	}
	return out;
}

export interface HitcostRow {
	job: string;
	/** Which build of dmu.ko: a variant's name, "N: path" for --module N, or "kernel/build". */
	module: string;
	/** One entry per pass: mean ratio of that pass's rounds. */
	passes: number[];
	/** All rounds of all passes. */
	rounds: number;
	mean: number;
	ci95: number;
}

/** Pool the rounds of every pass of one job and module. */
export function hitcostRow(job: string, module: string, perPass: readonly (readonly number[])[]): HitcostRow {
	const all = perPass.flat();
	const { mean, ci95 } = meanCi95(all);
	return { job, module, passes: perPass.map((p) => meanCi95(p).mean), rounds: all.length, mean, ci95 };
}

export function formatHitcost(rows: readonly HitcostRow[]): string {
	const head = ['job', 'module', 'rounds', 'dmu / dm-linear: mean ± 95%', 'per pass'];
	const body = rows.map((r) => [
		r.job,
		r.module,
		String(r.rounds),
		`${r.mean.toFixed(3)} ± ${Number.isFinite(r.ci95) ? r.ci95.toFixed(3) : '-'}`,
		r.passes.map((p) => p.toFixed(3)).join(' '),
	]);
	const width = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
	return [head, ...body].map((cells) => cells.map((c, i) => c.padEnd(width[i]!)).join('  ').trimEnd()).join('\n');
}
