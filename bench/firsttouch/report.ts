/**
 * Reading the guest's output of the first-touch benchmark: one fio JSON
 * file per job holding `dscow.N` and `<peer>.N` jobs, cowd's CPU ticks, and
 * the table of ratios. Pure functions over file contents (and over earlier
 * results files, to pool runs), so the numbers come from one place.
 */
import { type FioNumbers, mean, meanCi95, parseFio } from '../target/report.js';

export type Peer = 'snapshot' | 'linear';

export interface FirstTouchJob {
	/** Short name, as in bench/suite, e.g. "seq-write". */
	name: string;
	rw: 'read' | 'write' | 'randread' | 'randwrite';
	bs: string;
	iodepth: number;
	/** What dmu+dscow is measured against: dm-snapshot for first writes, dm-linear for cold reads and warm jobs (issue 4's goals). */
	peer: Peer;
	/** Issue 4's goal for dscow / peer. */
	goal: number;
	/**
	 * Over blocks dscow has copied and the kernel remembers (one region the
	 * job's pairs share, written before them), for a fixed time; dm-linear
	 * runs over a region of the same disk written the same way.
	 */
	warm?: true;
}

export const FIRST_TOUCH_JOBS: readonly FirstTouchJob[] = [
	{ name: 'seq-write', rw: 'write', bs: '1M', iodepth: 4, peer: 'snapshot', goal: 1.0 },
	{ name: 'rand-write-qd1', rw: 'randwrite', bs: '4k', iodepth: 1, peer: 'snapshot', goal: 1.0 },
	{ name: 'rand-write-qd32', rw: 'randwrite', bs: '4k', iodepth: 32, peer: 'snapshot', goal: 1.0 },
	{ name: 'seq-read', rw: 'read', bs: '1M', iodepth: 4, peer: 'linear', goal: 0.9 },
	{ name: 'rand-read-qd1', rw: 'randread', bs: '4k', iodepth: 1, peer: 'linear', goal: 0.9 },
	{ name: 'rand-read-qd32', rw: 'randread', bs: '4k', iodepth: 32, peer: 'linear', goal: 0.9 },
	{ name: 'warm-seq-write', rw: 'write', bs: '1M', iodepth: 4, peer: 'linear', goal: 0.95, warm: true },
	{ name: 'warm-rand-write-qd1', rw: 'randwrite', bs: '4k', iodepth: 1, peer: 'linear', goal: 0.95, warm: true },
	{ name: 'warm-rand-write-qd32', rw: 'randwrite', bs: '4k', iodepth: 32, peer: 'linear', goal: 0.95, warm: true },
	{ name: 'warm-seq-read', rw: 'read', bs: '1M', iodepth: 4, peer: 'linear', goal: 0.95, warm: true },
	{ name: 'warm-rand-read-qd1', rw: 'randread', bs: '4k', iodepth: 1, peer: 'linear', goal: 0.95, warm: true },
	{ name: 'warm-rand-read-qd32', rw: 'randread', bs: '4k', iodepth: 32, peer: 'linear', goal: 0.95, warm: true },
];

export const PEER_LABEL: Record<Peer, string> = { snapshot: 'dm-snapshot', linear: 'dm-linear' };

export const isWrite = (j: FirstTouchJob) => j.rw === 'write' || j.rw === 'randwrite';

/**
 * Regions of the base one run needs, in order: a warm-up write, the region
 * every cold read pair shares, one per cold write pair, and the one every
 * warm job shares.
 */
export function regionsNeeded(jobs: readonly FirstTouchJob[], repeat: number): number {
	const coldWrites = jobs.filter((j) => !j.warm && isWrite(j)).length;
	return 2 + coldWrites * repeat + (jobs.some((j) => j.warm) ? 1 : 0);
}

export interface PairRow {
	job: string;
	peer: Peer;
	goal: number;
	/** Per pair: dscow's and the peer's bandwidth (bytes/s), and dscow / peer. */
	dscowBw: number[];
	peerBw: number[];
	ratios: number[];
	/** Mean of the per-pair ratios and its 95% confidence half-width. */
	mean: number;
	ci95: number;
	/** cowd CPU over the whole job (both systems' runs), seconds; NaN when not measured. */
	cowdCpuS: number;
}

/** The pairs of one job from its fio JSON file (jobs dscow.N and <peer>.N, N = 1..repeat). */
export function pairRow(job: FirstTouchJob, fioText: string, repeat: number, cowdTicks: number): PairRow {
	const side = (sys: string): FioNumbers[] => Array.from({ length: repeat }, (_, i) => parseFio(fioText, job.rw, `${sys}.${i + 1}`));
	const d = side('dscow').map((x) => x.bw);
	const p = side(job.peer).map((x) => x.bw);
	return rowOf(job.name, job.peer, job.goal, d, p, cowdTicks / 100);
}

function rowOf(job: string, peer: Peer, goal: number, dscowBw: number[], peerBw: number[], cowdCpuS: number): PairRow {
	const ratios = dscowBw.map((x, i) => x / peerBw[i]!);
	return { job, peer, goal, dscowBw, peerBw, ratios, ...meanCi95(ratios), cowdCpuS };
}

/** "seq-write 65\nrand-write-qd1 219\n" (the guest's cowd-ticks.txt) as a map. */
export function parseTicks(text: string): Map<string, number> {
	const m = new Map<string, number>();
	for (const line of text.split('\n')) {
		const [name, ticks] = line.trim().split(/\s+/);
		if (name && ticks !== undefined && /^\d+$/.test(ticks)) m.set(name, Number(ticks));
	}
	return m;
}

/** Rows of several runs of the same jobs, as one sample each (the pairs of all runs together). */
export function pool(runs: readonly (readonly PairRow[])[]): PairRow[] {
	const names = [...new Set(runs.flatMap((r) => r.map((x) => x.job)))];
	return names.map((name) => {
		const rows = runs.flatMap((r) => r.filter((x) => x.job === name));
		const first = rows[0]!;
		const cpu = rows.map((x) => x.cowdCpuS).filter(Number.isFinite);
		return rowOf(
			name,
			first.peer,
			first.goal,
			rows.flatMap((x) => x.dscowBw),
			rows.flatMap((x) => x.peerBw),
			cpu.length > 0 ? mean(cpu) : Number.NaN,
		);
	});
}

/** Whole-interval verdict: above the goal, below it, or the interval holds it (cannot tell). */
export function verdict(r: PairRow): 'PASS' | 'MISS' | 'UNDECIDED' {
	if (!Number.isFinite(r.ci95)) return r.mean >= r.goal ? 'PASS' : 'MISS';
	if (r.mean - r.ci95 >= r.goal) return 'PASS';
	if (r.mean + r.ci95 < r.goal) return 'MISS';
	return 'UNDECIDED';
}

/** Sequential jobs in MiB/s, 4 KiB random ones in IOPS, as fio users read them. */
const speed = (bw: number, bs: string) => (bs === '4k' ? `${Math.round(bw / 4096)} IOPS` : `${(bw / 1048576).toFixed(0)} MiB/s`);

/** The human table: one line per job. `jobs` gives block sizes (for IOPS). */
export function formatPairs(rows: readonly PairRow[], jobs: readonly FirstTouchJob[] = FIRST_TOUCH_JOBS): string {
	const head = ['job', 'vs', 'dmu+dscow', 'peer', 'pairs', 'dscow/peer: mean ± 95%', 'goal', '', 'cowd CPU', 'per pair'];
	const body = rows.map((r) => {
		const bs = jobs.find((j) => j.name === r.job)?.bs ?? '4k';
		return [
			r.job,
			PEER_LABEL[r.peer],
			speed(mean(r.dscowBw), bs),
			speed(mean(r.peerBw), bs),
			String(r.ratios.length),
			`${r.mean.toFixed(3)} ± ${Number.isFinite(r.ci95) ? r.ci95.toFixed(3) : '-'}`,
			`>= ${r.goal}`,
			verdict(r),
			Number.isFinite(r.cowdCpuS) ? `${r.cowdCpuS.toFixed(2)} s` : '-',
			// A pooled row has dozens: the first few show the spread.
			r.ratios.slice(0, 12).map((x) => x.toFixed(2)).join(' ') + (r.ratios.length > 12 ? ' ...' : ''),
		];
	});
	const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
	const fmt = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
	return [fmt(head), ...body.map(fmt)].join('\n');
}

/**
 * The emulated disk's own rates at depth 32, IOPS, measured in the same
 * run over dm-linear: what any copy-on-write target has to work with.
 */
export interface DiskRates {
	/** Random reads of one CoW block. */
	blockRead: number;
	/** Random writes of one CoW block. */
	blockWrite: number;
	/** Random 4 KiB writes. */
	smallWrite: number;
}

/** The disk's rates from the guest's disk-rates.json: fio jobs block-read, block-write and small-write. */
export function parseDiskRates(fioText: string): DiskRates {
	return {
		blockRead: parseFio(fioText, 'randread', 'block-read').iops,
		blockWrite: parseFio(fioText, 'randwrite', 'block-write').iops,
		smallWrite: parseFio(fioText, 'randwrite', 'small-write').iops,
	};
}

/**
 * IOPS of one pass of 4 KiB random writes over a never-written region if
 * the disk were the only bound: every block is read and written once (its
 * copy), and every 4 KiB write is one more small write but a block's first
 * when the target merges that into the copy (dmu does, dm-snapshot writes
 * it after the copy). dm-snapshot's exception-store commits (a few dozen
 * 4 KiB writes a run) are left out, so its figure is a little high.
 */
export function firstTouchCeiling(rates: DiskRates, regionBytes: number, blockBytes: number, mergesFirstWrite: boolean): number {
	const writes = regionBytes / 4096;
	const blocks = regionBytes / blockBytes;
	const small = writes - (mergesFirstWrite ? blocks : 0);
	return writes / (blocks / rates.blockRead + blocks / rates.blockWrite + small / rates.smallWrite);
}

/**
 * Lines after the table for rand-write-qd32: each system's ceiling from
 * the disk's rates and how much of it the run reached. A ratio can only
 * move as far as the ceilings let it.
 */
export function formatCeiling(rates: DiskRates, row: PairRow, regionBytes: number, blockBytes: number): string {
	const dscow = firstTouchCeiling(rates, regionBytes, blockBytes, true);
	const snap = firstTouchCeiling(rates, regionBytes, blockBytes, false);
	const iops = (x: number) => Math.round(x).toLocaleString('en-US');
	const pct = (bw: number[], ceiling: number) => `${Math.round((mean(bw) / 4096 / ceiling) * 100)}%`;
	return (
		`the disk alone, at depth 32 (${iops(rates.blockRead)} block reads/s, ${iops(rates.blockWrite)} block writes/s, ` +
		`${iops(rates.smallWrite)} 4 KiB writes/s) would allow ${row.job}: dmu+dscow ${iops(dscow)} IOPS, ` +
		`dm-snapshot ${iops(snap)} IOPS (${(dscow / snap).toFixed(3)}x); reached ${pct(row.dscowBw, dscow)} and ${pct(row.peerBw, snap)}`
	);
}
