/**
 * Reading the benchmark suite's guest output and turning it into results:
 * medians per (system, workload), ratios against dm-linear and against the
 * best peer, the targets with PASS/MISS, Markdown and one SVG bar chart per
 * workload. Pure functions over file contents and numbers, so the host tests
 * can check them on recorded fio output.
 */
import { parseFio } from '../target/report.js';

export { parseFio };

export interface SuiteJob {
	/** Short name, e.g. "rand-read-qd32". */
	name: string;
	rw: 'read' | 'write' | 'randread' | 'randwrite';
	bs: string;
	iodepth: number;
}

export const SUITE_JOBS: readonly SuiteJob[] = [
	{ name: 'seq-read', rw: 'read', bs: '1M', iodepth: 4 },
	{ name: 'seq-write', rw: 'write', bs: '1M', iodepth: 4 },
	{ name: 'rand-read-qd1', rw: 'randread', bs: '4k', iodepth: 1 },
	{ name: 'rand-read-qd32', rw: 'randread', bs: '4k', iodepth: 32 },
	{ name: 'rand-write-qd1', rw: 'randwrite', bs: '4k', iodepth: 1 },
	{ name: 'rand-write-qd32', rw: 'randwrite', bs: '4k', iodepth: 32 },
];

export type Mode = 'cold' | 'warm';
export const MODES: readonly Mode[] = ['cold', 'warm'];

export interface SystemSpec {
	/** Key used by the guest script. */
	id: string;
	/** Label in tables and charts. */
	label: string;
	/** dmu systems are measured; the others are peers (linear is the limit, not a peer). */
	kind: 'limit' | 'dmu' | 'peer';
	/** Measured only when named in --systems (keeps the default run under 20 minutes). */
	onlyIfAsked?: boolean;
}

/**
 * In the order the guest runs them. dm-linear first, so a run cut short
 * still has its baseline; its writes land on the base itself, which only
 * changes the bytes the later systems read, not how they read them.
 */
export const SYSTEMS: readonly SystemSpec[] = [
	{ id: 'linear', label: 'dm-linear', kind: 'limit' },
	// The image on the raw CoW area, where dm-snapshot and dm-thin keep theirs.
	{ id: 'dscow', label: 'dmu+dscow', kind: 'dmu' },
	// The image as a file on ext4, like qcow2 and qemu-nbd's overlays: a loop device and a file system under it.
	{ id: 'dscow-file', label: 'dmu+dscow (file)', kind: 'dmu', onlyIfAsked: true },
	{ id: 'qcow2', label: 'dmu+qcow2', kind: 'dmu' },
	{ id: 'snapshot', label: 'dm-snapshot', kind: 'peer' },
	{ id: 'thin', label: 'dm-thin', kind: 'peer' },
	{ id: 'qemu-nbd', label: 'qemu-nbd', kind: 'peer' },
	{ id: 'nbdkit', label: 'nbdkit-cow', kind: 'peer' },
];

export function median(xs: readonly number[]): number {
	if (xs.length === 0) return Number.NaN;
	const s = [...xs].sort((a, b) => a - b);
	const m = Math.floor(s.length / 2);
	return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export interface Measure {
	/** One value per repetition. */
	reps: number[];
	median: number;
}

export const measure = (reps: number[]): Measure => ({ reps, median: median(reps) });

export interface WorkloadResult {
	/** Bytes per second. */
	bw: Measure;
	iops: Measure;
	/** Mean completion latency, microseconds. */
	latUs: Measure;
}

export interface SystemResult {
	id: string;
	label: string;
	kind: SystemSpec['kind'];
	/** Why the system could not be set up or measured; absent when it was. */
	failed?: string;
	setupMs?: number;
	/** Key `${job}/${mode}`. */
	workloads: Record<string, WorkloadResult>;
	/** Time to first byte of a cold 4 KiB read, microseconds. */
	ttfbUs?: Measure;
	/** MAP requests per second cowd answered (dmu systems only). */
	mapsPerSec?: Measure;
}

export interface SuiteResults {
	kernel: string;
	startedAt: string;
	options: Record<string, unknown>;
	systems: SystemResult[];
	/** cowd RSS for a 1 TiB virtual dscow disk, KiB: idle and after random reads. */
	rssKiB?: { idle: number; load: number };
	rssFailed?: string;
	vmMs: number;
	runDir: string;
}

export const wkey = (job: string, mode: Mode) => `${job}/${mode}`;

/** Build one system's result from the guest's files (read through `read`, which returns undefined for a missing file). */
export function collectSystem(
	sys: SystemSpec,
	jobs: readonly SuiteJob[],
	repeat: number,
	read: (file: string) => string | undefined,
): SystemResult {
	const r: SystemResult = { id: sys.id, label: sys.label, kind: sys.kind, workloads: {} };
	const failed = read(`setup-failed-${sys.id}.txt`);
	if (failed !== undefined) {
		r.failed = failed.trim() || 'setup failed (no message)';
		return r;
	}
	const setup = read(`setup-ms-${sys.id}.txt`);
	if (setup === undefined) {
		r.failed = 'not run (no setup record: the guest stopped early?)';
		return r;
	}
	r.setupMs = Number(setup.trim());
	for (const job of jobs) {
		// One fio per workload: its jobs are named <pass>.<rep> (cold.1, touch.1, warm.1, cold.2, ...).
		const file = `fio-${sys.id}-${job.name}.json`;
		const text = read(file);
		// A missing or cut-short report means the run stopped under this system (VM killed, timeout).
		if (text === undefined || text.trim() === '') {
			r.failed = `incomplete: no fio output ${file} (the VM stopped during this system?)`;
			return r;
		}
		for (const mode of MODES) {
			const runs = [];
			for (let i = 0; i < repeat; i++) {
				try {
					runs.push(parseFio(text, job.rw, `${mode}.${i + 1}`));
				} catch (e) {
					r.failed = `incomplete: unreadable fio output ${file}: ${(e as Error).message}`;
					return r;
				}
			}
			r.workloads[wkey(job.name, mode)] = {
				bw: measure(runs.map((x) => x.bw)),
				iops: measure(runs.map((x) => x.iops)),
				latUs: measure(runs.map((x) => x.latUs)),
			};
		}
	}
	const ttfb = read(`ttfb-${sys.id}.txt`);
	if (ttfb !== undefined) r.ttfbUs = measure(numbers(ttfb));
	const maps = read(`maps-${sys.id}.txt`);
	if (maps !== undefined) {
		const rates = lines(maps).map((l, i) => {
			const [count, wallMs] = l.split(/\s+/).map(Number);
			// fio's own run time when its output was kept: the wall time
			// also counts fio starting up, which under emulation took
			// seconds against a few hundred ms of requests.
			const ms = fioRuntimeMs(read(`fio-maps-${sys.id}-${i + 1}.json`)) ?? wallMs;
			return ((count ?? 0) * 1000) / (ms || 1);
		});
		r.mapsPerSec = measure(rates);
	}
	return r;
}

/** `job_runtime` (ms) of the first job of a fio JSON output, if readable. */
function fioRuntimeMs(text: string | undefined): number | undefined {
	if (text === undefined) return undefined;
	try {
		const ms = (JSON.parse(text) as { jobs?: { job_runtime?: number }[] }).jobs?.[0]?.job_runtime;
		return typeof ms === 'number' && ms > 0 ? ms : undefined;
	} catch {
		return undefined;
	}
}

const lines = (s: string) => s.split('\n').filter((l) => l.trim() !== '');
const numbers = (s: string) => lines(s).map(Number);

/** Median IOPS of one workload, or undefined if the system has no such result. */
function iopsOf(s: SystemResult, key: string): number | undefined {
	const w = s.workloads[key];
	return w ? w.iops.median : undefined;
}

export interface RatioRow {
	job: string;
	mode: Mode;
	/** label -> median IOPS (same ratio as bandwidth) / dm-linear's. */
	vsLinear: Record<string, number>;
	/** The fastest peer for this workload and each dmu system's ratio to it. */
	bestPeer?: string;
	vsBestPeer: Record<string, number>;
}

export function ratioRows(res: SuiteResults, jobs: readonly SuiteJob[]): RatioRow[] {
	const ok = res.systems.filter((s) => !s.failed);
	const lin = ok.find((s) => s.kind === 'limit');
	const out: RatioRow[] = [];
	for (const job of jobs) {
		for (const mode of MODES) {
			const key = wkey(job.name, mode);
			const row: RatioRow = { job: job.name, mode, vsLinear: {}, vsBestPeer: {} };
			const l = lin ? iopsOf(lin, key) : undefined;
			for (const s of ok) {
				const v = iopsOf(s, key);
				if (v !== undefined && l) row.vsLinear[s.label] = v / l;
			}
			let best: SystemResult | undefined;
			for (const s of ok.filter((x) => x.kind === 'peer')) {
				if (!best || (iopsOf(s, key) ?? 0) > (iopsOf(best, key) ?? 0)) best = s;
			}
			const bv = best ? iopsOf(best, key) : undefined;
			if (best && bv) {
				row.bestPeer = best.label;
				for (const s of ok.filter((x) => x.kind === 'dmu')) {
					const v = iopsOf(s, key);
					if (v !== undefined) row.vsBestPeer[s.label] = v / bv;
				}
			}
			out.push(row);
		}
	}
	return out;
}

export interface TargetCheck {
	what: string;
	ratio: number;
	goal: number;
	pass: boolean;
}

/**
 * The issue's targets for dmu+dscow: warm >= 0.95x dm-linear; first-touch
 * write >= 1.0x dm-snapshot and >= 2x qemu-nbd; cold read >= 0.9x dm-linear.
 * One line per workload it applies to; a missing peer makes the target NaN (MISS).
 */
export function targets(res: SuiteResults, jobs: readonly SuiteJob[], dmuId = 'dscow'): TargetCheck[] {
	const by = (id: string) => res.systems.find((s) => s.id === id && !s.failed);
	const dmu = by(dmuId);
	const out: TargetCheck[] = [];
	const check = (what: string, key: string, peerId: string, goal: number) => {
		const a = dmu ? iopsOf(dmu, key) : undefined;
		const p = by(peerId);
		const b = p ? iopsOf(p, key) : undefined;
		const ratio = a !== undefined && b ? a / b : Number.NaN;
		out.push({ what, ratio, goal, pass: ratio >= goal });
	};
	for (const j of jobs) check(`warm ${j.name} vs dm-linear`, wkey(j.name, 'warm'), 'linear', 0.95);
	for (const j of jobs.filter((x) => x.rw.endsWith('write'))) {
		check(`first-touch ${j.name} vs dm-snapshot`, wkey(j.name, 'cold'), 'snapshot', 1.0);
		check(`first-touch ${j.name} vs qemu-nbd`, wkey(j.name, 'cold'), 'qemu-nbd', 2.0);
	}
	for (const j of jobs.filter((x) => x.rw.endsWith('read'))) {
		check(`cold ${j.name} vs dm-linear`, wkey(j.name, 'cold'), 'linear', 0.9);
	}
	return out;
}

const fx = (x: number | undefined, d = 2) => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(d));

function mdTable(head: string[], body: string[][]): string {
	const esc = (c: string) => c.replaceAll('|', '\\|');
	return [
		`| ${head.map(esc).join(' | ')} |`,
		`|${head.map(() => '---').join('|')}|`,
		...body.map((r) => `| ${r.map(esc).join(' | ')} |`),
	].join('\n');
}

/** Human number for a workload: MiB/s for 1 MiB jobs, IOPS for small blocks. */
function absolute(job: SuiteJob, w: WorkloadResult | undefined): string {
	if (!w) return '–';
	if (job.bs === '1M') return `${(w.bw.median / 1048576).toFixed(1)} MiB/s`;
	return `${Math.round(w.iops.median)} IOPS`;
}

export function markdown(res: SuiteResults, jobs: readonly SuiteJob[]): string {
	const ok = res.systems.filter((s) => !s.failed);
	const dmus = ok.filter((s) => s.kind === 'dmu');
	const others = ok.filter((s) => s.kind !== 'dmu');
	const rows = ratioRows(res, jobs);
	const out: string[] = [];
	// Runs before the option existed booted with the HPET clocksource.
	const clock = typeof res.options.clock === 'string' ? res.options.clock : 'hpet';
	out.push(`## dmu benchmark suite (${res.kernel}, guest clock ${clock}, ${res.startedAt})`, '');
	out.push(
		'Ratios of median IOPS (= bandwidth ratio) from the same VM run; > 1 is faster. ' +
			'cold = first touch of never-written blocks, warm = second pass over the same blocks.',
		'',
	);
	const failed = res.systems.filter((s) => s.failed);
	for (const f of failed) out.push(`**FAILED: ${f.label}** — ${f.failed}`, '');
	out.push('### Ratios', '');
	const head = [
		'workload',
		...dmus.map((d) => `${d.label} / dm-linear`),
		...dmus.map((d) => `${d.label} / best peer`),
		'best peer',
		...others.filter((s) => s.kind === 'peer').map((p) => `${p.label} / dm-linear`),
	];
	out.push(
		mdTable(
			head,
			rows.map((r) => [
				`${r.job} ${r.mode}`,
				...dmus.map((d) => fx(r.vsLinear[d.label])),
				...dmus.map((d) => fx(r.vsBestPeer[d.label])),
				r.bestPeer ?? '–',
				...others.filter((s) => s.kind === 'peer').map((p) => fx(r.vsLinear[p.label])),
			]),
		),
		'',
	);
	out.push('### Targets (dmu+dscow)', '');
	out.push(
		mdTable(
			['target', 'ratio', 'goal', ''],
			targets(res, jobs).map((t) => [t.what, fx(t.ratio), `≥ ${t.goal}`, t.pass ? 'PASS' : 'MISS']),
		),
		'',
	);
	out.push('### Absolute medians (emulated machine: compare ratios, not these)', '');
	out.push(
		mdTable(
			['workload', ...ok.map((s) => s.label)],
			jobs.flatMap((j) =>
				MODES.map((m) => [`${j.name} ${m}`, ...ok.map((s) => absolute(j, s.workloads[wkey(j.name, m)]))]),
			),
		),
		'',
	);
	out.push(
		mdTable(
			['system', 'cold read time to first byte (µs)', 'MAP requests/s', 'setup (ms)'],
			ok.map((s) => [
				s.label,
				fx(s.ttfbUs?.median, 0),
				s.mapsPerSec ? fx(s.mapsPerSec.median, 0) : '',
				fx(s.setupMs, 0),
			]),
		),
		'',
	);
	if (res.rssKiB) {
		out.push(
			`cowd RSS for a 1 TiB virtual dscow disk: ${(res.rssKiB.idle / 1024).toFixed(1)} MiB idle, ` +
				`${(res.rssKiB.load / 1024).toFixed(1)} MiB after random reads.`,
			'',
		);
	} else if (res.rssFailed) {
		out.push(`**FAILED: cowd RSS (1 TiB dscow)** — ${res.rssFailed}`, '');
	}
	return out.join('\n');
}

const xmlEscape = (s: string) =>
	s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll('"', '&quot;');

/** One horizontal bar chart for one workload: each system's ratio to dm-linear (cold and warm bars). */
export function svgChart(res: SuiteResults, job: SuiteJob): string {
	const ok = res.systems.filter((s) => !s.failed);
	const lin = ok.find((s) => s.kind === 'limit');
	const barH = 14;
	const gap = 10;
	const left = 110;
	const width = 560;
	const plotW = width - left - 70;
	const ratios = ok.map((s) =>
		MODES.map((m) => {
			const a = iopsOf(s, wkey(job.name, m));
			const l = lin ? iopsOf(lin, wkey(job.name, m)) : undefined;
			return a !== undefined && l ? a / l : 0;
		}),
	);
	const max = Math.max(1, ...ratios.flat());
	const top = 40;
	const height = top + ok.length * (2 * barH + gap) + 30;
	const colour: Record<Mode, string> = { cold: '#8fb8de', warm: '#2f6fae' };
	const parts: string[] = [
		`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
		`<title>${xmlEscape(`${job.name} (${job.bs}, iodepth ${job.iodepth}): ratio to dm-linear`)}</title>`,
		`<text x="10" y="18" font-size="13" font-weight="bold">${xmlEscape(`${job.name} — ${job.bs}, iodepth ${job.iodepth}: median IOPS / dm-linear`)}</text>`,
		`<rect x="${left}" y="26" width="10" height="10" fill="${colour.cold}"/><text x="${left + 14}" y="35">cold (first touch)</text>`,
		`<rect x="${left + 130}" y="26" width="10" height="10" fill="${colour.warm}"/><text x="${left + 144}" y="35">warm</text>`,
	];
	ok.forEach((s, i) => {
		const y0 = top + i * (2 * barH + gap);
		parts.push(`<text x="${left - 6}" y="${y0 + barH + 4}" text-anchor="end">${xmlEscape(s.label)}</text>`);
		MODES.forEach((m, k) => {
			const r = ratios[i]![k]!;
			const w = Math.max(0, (r / max) * plotW);
			const y = y0 + k * barH;
			parts.push(
				`<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barH - 2}" fill="${colour[m]}"/>`,
				`<text x="${(left + w + 4).toFixed(1)}" y="${y + barH - 4}">${r.toFixed(2)}</text>`,
			);
		});
	});
	const x1 = left + plotW / max;
	parts.push(
		`<line x1="${x1.toFixed(1)}" y1="${top - 4}" x2="${x1.toFixed(1)}" y2="${height - 24}" stroke="#c33" stroke-dasharray="4 3"/>`,
		`<text x="${x1.toFixed(1)}" y="${height - 10}" text-anchor="middle" fill="#c33">1.0 = dm-linear</text>`,
		'</svg>',
	);
	return `${parts.join('\n')}\n`;
}
