/**
 * Reading the guest's output of the target benchmark: fio JSON files, the
 * responder's JSON-lines log, and the table of ratios dmu / dm-linear.
 * Pure functions over file contents, so the numbers come from one place.
 */

export interface JobSpec {
	/** Short name, e.g. "seq-read". */
	name: string;
	/** fio --rw */
	rw: 'read' | 'write' | 'randread' | 'randwrite';
	/** fio --bs */
	bs: string;
}

export const JOBS: readonly JobSpec[] = [
	// Writes first: the sequential write fills the area the reads then read.
	{ name: 'seq-write', rw: 'write', bs: '1M' },
	{ name: 'seq-read', rw: 'read', bs: '1M' },
	{ name: 'rand-read', rw: 'randread', bs: '4k' },
	{ name: 'rand-write', rw: 'randwrite', bs: '4k' },
];

export interface FioNumbers {
	/** Bytes per second. */
	bw: number;
	iops: number;
	/** Mean completion latency, microseconds. */
	latUs: number;
	/**
	 * CPU time of fio's thread per I/O, microseconds (user + system over the
	 * measured window, from getrusage): with libaio the submission runs in
	 * that thread, dm's map() included; completions (end_io) mostly run in
	 * interrupt context and are not in it. NaN when fio did no I/O.
	 */
	cpuUs: number;
}

/** The numbers of the single job in a fio --output-format=json file. */
export function parseFio(text: string, rw: JobSpec['rw'], jobName?: string): FioNumbers {
	// fio may print warnings before the JSON object.
	const json = JSON.parse(text.slice(text.indexOf('{'))) as {
		jobs: Array<
			Record<'read' | 'write', { bw_bytes: number; iops: number; total_ios: number; clat_ns: { mean: number } }> & {
				jobname?: string;
				usr_cpu: number;
				sys_cpu: number;
				job_runtime: number;
			}
		>;
	};
	const job = jobName === undefined ? json.jobs[0] : json.jobs.find((j) => j.jobname === jobName);
	if (!job) throw new Error(jobName === undefined ? 'fio output has no job' : `fio output has no job ${jobName}`);
	const side = rw.endsWith('read') ? job.read : job.write;
	// usr_cpu and sys_cpu are percent of job_runtime (milliseconds).
	const cpuUs = side.total_ios > 0 ? (((job.usr_cpu + job.sys_cpu) / 100) * job.job_runtime * 1000) / side.total_ios : Number.NaN;
	return { bw: side.bw_bytes, iops: side.iops, latUs: side.clat_ns.mean / 1000, cpuUs };
}

export const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

export interface Row {
	job: JobSpec;
	lin: FioNumbers;
	dmu: FioNumbers;
	/** dmu bandwidth / dm-linear bandwidth (same as the IOPS ratio). */
	ratio: number;
	/** Ratio per repetition, to show the spread. */
	ratios: number[];
	/** dmu CPU per I/O / dm-linear CPU per I/O (> 1: dmu costs more). */
	cpuRatio: number;
	/** Mean of the per-repetition ratios and its 95% confidence half-width (Student's t). */
	repMean: number;
	ci95: number;
}

/** Two-sided 95% quantiles of Student's t by degrees of freedom, 1 to 20. */
const T95 = [Number.NaN, 12.71, 4.3, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.2, 2.18, 2.16, 2.14, 2.13, 2.12, 2.11, 2.1, 2.09, 2.09];

/**
 * Student's t quantile for a 95% interval. Past the table, the
 * Cornish-Fisher expansion around the normal's 1.96 (within 0.001 of the
 * exact value from 20 degrees of freedom on): pooled runs have 30-70
 * pairs, where a flat 1.96 made the interval 2-4% too narrow.
 */
function t95(df: number): number {
	if (df < T95.length) return T95[df]!;
	const z = 1.959964;
	return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df * df);
}

/** Mean and 95% confidence half-width of a sample (NaN half-width for fewer than 2). */
export function meanCi95(xs: readonly number[]): { mean: number; ci95: number } {
	const n = xs.length;
	const m = mean(xs);
	if (n < 2) return { mean: m, ci95: Number.NaN };
	const sd = Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (n - 1));
	return { mean: m, ci95: (t95(n - 1) * sd) / Math.sqrt(n) };
}

/** Average the repetitions of one job; ratio of the means. */
export function row(job: JobSpec, lin: FioNumbers[], dmu: FioNumbers[]): Row {
	const avg = (xs: FioNumbers[]): FioNumbers => ({
		bw: mean(xs.map((x) => x.bw)),
		iops: mean(xs.map((x) => x.iops)),
		latUs: mean(xs.map((x) => x.latUs)),
		cpuUs: mean(xs.map((x) => x.cpuUs)),
	});
	const l = avg(lin);
	const d = avg(dmu);
	const ratios = lin.map((x, i) => (dmu[i]?.bw ?? Number.NaN) / x.bw);
	const { mean: repMean, ci95 } = meanCi95(ratios);
	return { job, lin: l, dmu: d, ratio: d.bw / l.bw, ratios, cpuRatio: d.cpuUs / l.cpuUs, repMean, ci95 };
}

export interface ResponderStats {
	/** MAP requests received before the measurement started (prewarm). */
	prewarmMaps: number;
	/** MAP requests received during the fio runs: 0 means only hits were measured. */
	measureMaps: number;
	/** Reads that returned requests, and the largest batch seen. */
	batches: number;
	maxBatch: number;
}

/** Count requests in the responder log; `prewarmLines` = log lines written by the end of the prewarm. */
export function responderStats(jsonl: string, prewarmLines: number): ResponderStats {
	const lines = jsonl.split('\n').filter((l) => l.trim() !== '');
	const s: ResponderStats = { prewarmMaps: 0, measureMaps: 0, batches: 0, maxBatch: 0 };
	const seen = new Set<number>();
	lines.forEach((l, i) => {
		const ev = JSON.parse(l) as { ev: string; type?: string; batch?: number; size?: number };
		if (ev.ev !== 'rx') return;
		if (ev.batch !== undefined && !seen.has(ev.batch)) {
			seen.add(ev.batch);
			s.batches++;
			s.maxBatch = Math.max(s.maxBatch, ev.size ?? 0);
		}
		if (ev.type === 'MAP') {
			if (i < prewarmLines) s.prewarmMaps++;
			else s.measureMaps++;
		}
	});
	return s;
}

const mib = (bytes: number) => `${(bytes / 1048576).toFixed(1)} MiB/s`;

/** The human table: one line per job, ratio last. */
export function formatTable(rows: readonly Row[]): string {
	const head = ['job', 'bs', 'dm-linear', 'dmu', 'lat lin/dmu (us)', 'cpu/io lin/dmu (us)', 'dmu/dm-linear', 'pairs: mean ± 95%', 'per pair'];
	const us = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '-');
	const body = rows.map((r) => [
		r.job.name,
		r.job.bs,
		`${mib(r.lin.bw)} ${Math.round(r.lin.iops)} IOPS`,
		`${mib(r.dmu.bw)} ${Math.round(r.dmu.iops)} IOPS`,
		`${r.lin.latUs.toFixed(0)} / ${r.dmu.latUs.toFixed(0)}`,
		`${us(r.lin.cpuUs)} / ${us(r.dmu.cpuUs)}`,
		r.ratio.toFixed(3),
		`${r.repMean.toFixed(3)} ± ${Number.isFinite(r.ci95) ? r.ci95.toFixed(3) : '-'}`,
		r.ratios.map((x) => x.toFixed(2)).join(' '),
	]);
	const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
	const fmt = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
	return [fmt(head), ...body.map(fmt)].join('\n');
}
