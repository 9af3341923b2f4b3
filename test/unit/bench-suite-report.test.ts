/**
 * bench/suite/report.ts: medians, the ratio table, the targets, Markdown and
 * SVG, from fio JSON recorded once with real fio (bench/suite/fixtures/;
 * per-system numbers are set in copies of those reports).
 */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import {
	collectSystem,
	markdown,
	median,
	ratioRows,
	SUITE_JOBS,
	type SuiteJob,
	type SuiteResults,
	SYSTEMS,
	svgChart,
	targets,
	wkey,
} from '../../bench/suite/report.js';
import { REPO_ROOT } from '../support/vm.js';

const fixture = (name: string) => fs.readFileSync(path.join(REPO_ROOT, 'bench/suite/fixtures', name), 'utf8');

/** A real fio job entry for `job`, named `name`, with its IOPS (and bandwidth to match) set to `iops`. */
function fioJob(job: SuiteJob, iops: number, name: string): unknown {
	const isRead = job.rw.endsWith('read');
	const j = JSON.parse(fixture(job.bs === '1M' ? 'fio-write-1M.json' : 'fio-randread-4k.json'));
	const bs = job.bs === '1M' ? 1048576 : 4096;
	const src = j.jobs[0][job.bs === '1M' ? 'write' : 'read'];
	const side = { ...src, iops, bw_bytes: iops * bs };
	return { ...j.jobs[0], jobname: name, [isRead ? 'read' : 'write']: side };
}

/** One workload's fio report as the guest writes it: jobs <pass>.<rep>, IOPS per repetition. */
function fioWorkload(job: SuiteJob, reps: Array<{ cold: number; warm: number }>, passes = ['cold', 'touch', 'warm']): string {
	const j = JSON.parse(fixture('fio-write-1M.json'));
	j.jobs = reps.flatMap((r, i) => passes.map((p) => fioJob(job, p === 'cold' ? r.cold : r.warm, `${p}.${i + 1}`)));
	return JSON.stringify(j);
}

const JOBS = SUITE_JOBS.filter((j) => j.name === 'seq-write' || j.name === 'rand-read-qd32');
const REPEAT = 3;
/** IOPS factors of the three repetitions: the median is the middle one. */
const REPS = [0.9, 1, 1.2];

/** Guest files for systems whose IOPS are base * factor (reps: x0.9, x1, x1.2 so the median is base*factor). */
function guestFiles(factors: Record<string, number>, failed: Record<string, string> = {}): Map<string, string> {
	const files = new Map<string, string>();
	for (const [id, f] of Object.entries(factors)) {
		files.set(`setup-ms-${id}.txt`, '1234\n');
		for (const job of JOBS) {
			files.set(`fio-${id}-${job.name}.json`, fioWorkload(job, REPS.map((k) => ({ cold: 500 * f * k, warm: 1000 * f * k }))));
		}
		files.set(`ttfb-${id}.txt`, '300\n100\n200\n');
	}
	for (const [id, msg] of Object.entries(failed)) files.set(`setup-failed-${id}.txt`, `${msg}\n`);
	files.set('maps-dscow.txt', '1000 2000\n3000 2000\n2000 2000\n');
	return files;
}

function results(files: Map<string, string>): SuiteResults {
	return {
		kernel: '6.1.0-test',
		startedAt: '2026-11-25T00:00:00Z',
		options: {},
		systems: SYSTEMS.map((s) => collectSystem(s, JOBS, REPEAT, (f) => files.get(f))),
		rssKiB: { idle: 51200, load: 61440 },
		vmMs: 1,
		runDir: '/nowhere',
	};
}

const FACTORS = { dscow: 0.96, 'dscow-file': 0.6, qcow2: 0.5, snapshot: 0.8, thin: 0.9, 'qemu-nbd': 0.3, nbdkit: 0.2, linear: 1 };

t.test('median', async (t) => {
	t.equal(median([3, 1, 2]), 2);
	t.equal(median([4, 1, 3, 2]), 2.5);
	t.equal(median([7]), 7);
	t.ok(Number.isNaN(median([])));
});

t.test('collectSystem takes medians of the repetitions from fio JSON', async (t) => {
	const res = results(guestFiles(FACTORS));
	const dscow = res.systems.find((s) => s.id === 'dscow')!;
	t.notOk(dscow.failed);
	const w = dscow.workloads[wkey('rand-read-qd32', 'warm')]!;
	t.equal(w.iops.reps.length, 3);
	t.ok(Math.abs(w.iops.median - 960) < 1e-6, `median IOPS ${w.iops.median}`);
	t.ok(Math.abs(w.bw.median - 960 * 4096) < 1e-3);
	t.ok(w.latUs.median > 0, 'latency comes from the recorded clat');
	t.equal(dscow.ttfbUs?.median, 200);
	t.equal(dscow.mapsPerSec?.median, 1000, '2000 misses in 2 s');
	t.equal(dscow.setupMs, 1234);
});

t.test("MAP requests/s use fio's own run time when its output was kept", async (t) => {
	const files = new Map<string, string>([
		['setup-ms-dscow.txt', '1'],
		// wall times include fio's start-up: 256 misses in ~2 s by the wall clock
		['maps-dscow.txt', '256 2000\n256 2100\n256 1900\n'],
		['fio-maps-dscow-1.json', JSON.stringify({ jobs: [{ job_runtime: 256 }] })],
		['fio-maps-dscow-2.json', JSON.stringify({ jobs: [{ job_runtime: 128 }] })],
		['fio-maps-dscow-3.json', 'not json'],
	]);
	const spec = SYSTEMS.find((s) => s.id === 'dscow')!;
	const r = collectSystem(spec, [], 3, (f) => files.get(f));
	t.same(
		r.mapsPerSec?.reps.map((x) => Math.round(x)),
		[1000, 2000, 135],
		'256/0.256 s, 256/0.128 s, and the wall time where the fio output is unreadable',
	);
});

t.test('a missing or empty fio file marks the system incomplete, not zero', async (t) => {
	const files = guestFiles(FACTORS);
	files.delete('fio-thin-seq-write.json');
	files.set('fio-nbdkit-rand-read-qd32.json', '');
	// fio stopped after the first cold pass (the VM died during the touch).
	files.set('fio-qcow2-seq-write.json', fioWorkload(JOBS[0]!, [{ cold: 500, warm: 1000 }], ['cold']));
	const res = results(files);
	t.match(res.systems.find((s) => s.id === 'thin')!.failed, /incomplete: no fio output fio-thin-seq-write\.json/);
	t.match(res.systems.find((s) => s.id === 'nbdkit')!.failed, /incomplete: no fio output fio-nbdkit-rand-read-qd32\.json/);
	t.match(res.systems.find((s) => s.id === 'qcow2')!.failed, /unreadable fio output fio-qcow2-seq-write\.json: fio output has no job cold\.2/);
	t.notOk(res.systems.find((s) => s.id === 'dscow')!.failed);
	t.match(markdown(res, JOBS), /\*\*FAILED: dm-thin\*\* — incomplete/);
});

t.test('ratio table: against dm-linear and the best peer', async (t) => {
	const rows = ratioRows(results(guestFiles(FACTORS)), JOBS);
	t.equal(rows.length, JOBS.length * 2);
	for (const r of rows) {
		t.ok(Math.abs(r.vsLinear['dmu+dscow']! - 0.96) < 1e-9, `${r.job} ${r.mode} dscow/linear`);
		t.ok(Math.abs(r.vsLinear['dmu+qcow2']! - 0.5) < 1e-9);
		t.equal(r.bestPeer, 'dm-thin');
		t.ok(Math.abs(r.vsBestPeer['dmu+dscow']! - 0.96 / 0.9) < 1e-9);
		t.notOk('dm-linear' in r.vsBestPeer, 'the limit is not a peer');
	}
});

t.test('targets: PASS and MISS', async (t) => {
	const checks = targets(results(guestFiles(FACTORS)), JOBS);
	const get = (what: string) => checks.find((c) => c.what === what)!;
	t.equal(get('warm seq-write vs dm-linear').pass, true, '0.96 >= 0.95');
	t.equal(get('first-touch seq-write vs dm-snapshot').pass, true, '0.96/0.8 >= 1');
	t.equal(get('first-touch seq-write vs qemu-nbd').pass, true, '0.96/0.3 >= 2');
	t.equal(get('cold rand-read-qd32 vs dm-linear').pass, true);
	const slow = targets(results(guestFiles({ ...FACTORS, dscow: 0.7 })), JOBS);
	t.equal(slow.find((c) => c.what === 'warm seq-write vs dm-linear')!.pass, false);
	t.equal(slow.find((c) => c.what === 'first-touch seq-write vs dm-snapshot')!.pass, false);
	t.equal(slow.find((c) => c.what === 'cold rand-read-qd32 vs dm-linear')!.pass, false);
	t.equal(checks.filter((c) => c.what.startsWith('first-touch')).length, 2, 'writes only');
});

t.test('a failed peer is shown loudly and its targets MISS', async (t) => {
	const { 'qemu-nbd': _gone, ...rest } = FACTORS;
	const res = results(guestFiles(rest, { 'qemu-nbd': 'qemu-nbd: Failed to open /dev/nbd0' }));
	t.match(res.systems.find((s) => s.id === 'qemu-nbd')!.failed, /Failed to open/);
	const md = markdown(res, JOBS);
	t.match(md, /\*\*FAILED: qemu-nbd\*\* — qemu-nbd: Failed to open \/dev\/nbd0/);
	const c = targets(res, JOBS).find((x) => x.what === 'first-touch seq-write vs qemu-nbd')!;
	t.equal(c.pass, false);
	t.ok(Number.isNaN(c.ratio));
	t.match(md, /first-touch seq-write vs qemu-nbd \| – \| ≥ 2 \| MISS/);
	const files = new Map<string, string>();
	t.match(collectSystem(SYSTEMS[0]!, JOBS, REPEAT, (f) => files.get(f)).failed, /not run/);
});

t.test('markdown: ratios first, well-formed tables', async (t) => {
	const md = markdown(results(guestFiles(FACTORS)), JOBS);
	t.ok(md.indexOf('### Ratios') < md.indexOf('### Absolute'), 'ratios lead');
	t.match(md, /\| seq-write warm \| 0\.96 \| 0\.60 \| 0\.50 \| 1\.07 \| 0\.67 \| 0\.56 \| dm-thin \|/);
	t.match(md, /\| warm seq-write vs dm-linear \| 0\.96 \| ≥ 0\.95 \| PASS \|/);
	t.match(md, /cowd RSS for a 1 TiB virtual dscow disk: 50\.0 MiB idle, 60\.0 MiB/);
	t.match(md, /\| dmu\+dscow \| 200 \| 1000 \| 1234 \|/);
	// Every line of a table has as many cells as its header.
	for (const table of md.split('\n\n').filter((b) => b.startsWith('|'))) {
		const widths = table.split('\n').map((l) => l.split(/(?<!\\)\|/).length);
		t.same(new Set(widths).size, 1, `table starting ${table.slice(0, 30)}`);
	}
});

/** Tags balance and attribute syntax: enough to catch a broken SVG without an XML library. */
function wellFormed(xml: string): string | undefined {
	const stack: string[] = [];
	const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
	let last = 0;
	for (let m = tag.exec(xml); m; m = tag.exec(xml)) {
		const between = xml.slice(last, m.index);
		if (/[<>]/.test(between)) return `stray markup before offset ${m.index}: ${between}`;
		if (/&(?!amp;|lt;|gt;|quot;|#\d+;)/.test(between)) return `bad entity in ${between}`;
		last = tag.lastIndex;
		const [, close, name, , selfClose] = m;
		if (selfClose) continue;
		if (close) {
			if (stack.pop() !== name) return `</${name}> does not close the open tag`;
		} else stack.push(name!);
	}
	if (/[<>]/.test(xml.slice(last))) return 'stray markup at the end';
	return stack.length === 0 ? undefined : `unclosed ${stack.join(',')}`;
}

t.test('SVG chart per workload is well-formed and shows each system', async (t) => {
	const res = results(guestFiles(FACTORS));
	for (const job of JOBS) {
		const svg = svgChart(res, job);
		t.equal(wellFormed(svg), undefined, `${job.name} well-formed`);
		t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
		for (const s of SYSTEMS) t.match(svg, `>${s.label}</text>`);
		t.match(svg, />0\.96</, 'dscow ratio label');
		t.notMatch(svg, /NaN|undefined/);
	}
	t.equal(wellFormed('<svg><rect></svg>'), '</svg> does not close the open tag', 'the checker can fail');
});
