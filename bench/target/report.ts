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
}

/** The numbers of the single job in a fio --output-format=json file. */
export function parseFio(text: string, rw: JobSpec['rw'], jobName?: string): FioNumbers {
	// fio may print warnings before the JSON object.
	const json = JSON.parse(text.slice(text.indexOf('{'))) as {
		jobs: Array<Record<'read' | 'write', { bw_bytes: number; iops: number; clat_ns: { mean: number } }> & { jobname?: string }>;
	};
	const job = jobName === undefined ? json.jobs[0] : json.jobs.find((j) => j.jobname === jobName);
	if (!job) throw new Error(jobName === undefined ? 'fio output has no job' : `fio output has no job ${jobName}`);
	const side = rw.endsWith('read') ? job.read : job.write;
	return { bw: side.bw_bytes, iops: side.iops, latUs: side.clat_ns.mean / 1000 };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

export interface Row {
	job: JobSpec;
	lin: FioNumbers;
	dmu: FioNumbers;
	/** dmu bandwidth / dm-linear bandwidth (same as the IOPS ratio). */
	ratio: number;
	/** Ratio per repetition, to show the spread. */
	ratios: number[];
}

/** Average the repetitions of one job; ratio of the means. */
export function row(job: JobSpec, lin: FioNumbers[], dmu: FioNumbers[]): Row {
	const avg = (xs: FioNumbers[]): FioNumbers => ({
		bw: mean(xs.map((x) => x.bw)),
		iops: mean(xs.map((x) => x.iops)),
		latUs: mean(xs.map((x) => x.latUs)),
	});
	const l = avg(lin);
	const d = avg(dmu);
	return { job, lin: l, dmu: d, ratio: d.bw / l.bw, ratios: lin.map((x, i) => (dmu[i]?.bw ?? Number.NaN) / x.bw) };
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
	const head = ['job', 'bs', 'dm-linear', 'dmu', 'lat lin/dmu (us)', 'dmu/dm-linear', 'per rep'];
	const body = rows.map((r) => [
		r.job.name,
		r.job.bs,
		`${mib(r.lin.bw)} ${Math.round(r.lin.iops)} IOPS`,
		`${mib(r.dmu.bw)} ${Math.round(r.dmu.iops)} IOPS`,
		`${r.lin.latUs.toFixed(0)} / ${r.dmu.latUs.toFixed(0)}`,
		r.ratio.toFixed(3),
		r.ratios.map((x) => x.toFixed(2)).join(' '),
	]);
	const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
	const fmt = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
	return [fmt(head), ...body.map(fmt)].join('\n');
}
