/**
 * Guest side of test/vm/power-kill.test.ts: one process per boot, started
 * early so node's start-up (several seconds under TCG) overlaps the rest.
 *
 *   node dist/test/vm/power-kill-records.js --dir T --cut C --expect FILE \
 *     --verify-out FILE [--verify-go FILE] [--image IMG --check-go FILE --check-out FILE] \
 *     [--ack FILE --go FILE [--max-ms N]]
 *
 * 1. With --image: once --check-go exists, checks the dscow image as
 *    `dmu check` does (the same plugin function and exit codes: 0 clean,
 *    2 corruptions, 3 leaks only) and writes "rc N" and the findings to
 *    --check-out (renamed to --check-out.done when complete).
 * 2. Once --verify-go exists (at once without it): every id in --expect
 *    (one a line: the records earlier boots acknowledged) must be a file
 *    with exactly recordBytes(id) and a line of T/log. Writes
 *    "checked N missing M bad B log-missing L" and the failing ids to
 *    --verify-out (then renamed to --verify-out.done). No file under T is
 *    left open.
 * 3. Without --go, stops here. Otherwise waits for the --go file (the
 *    script creates it once T is mounted for writing).
 * 4. Writes records C-1, C-2 ...: file T/d<n%8>/r-C-n written and fsynced
 *    (every 4th also fsyncs its directory), then the id appended to T/log
 *    and that fsynced; only then the id is appended to --ack (on the 9p out
 *    share, cache=none: it reaches the host before the next record starts).
 *    So every id on the host's list was fsynced before the cut.
 * Content is derived from the id alone, so the checker needs no copy.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { check } from '../../src/plugins/dscow/check.js';

/** The bytes of record `id`: 3,000-22,000 bytes of SHA-256 counter stream. */
export function recordBytes(id: string): Buffer {
	const h0 = createHash('sha256').update(`size:${id}`).digest();
	const size = 3000 + (h0.readUInt32LE(0) % 19000);
	const out = Buffer.alloc(size);
	for (let j = 0, off = 0; off < size; j++, off += 32) {
		createHash('sha256').update(`${id}:${j}`).digest().copy(out, off);
	}
	return out;
}

export const recordPath = (dir: string, id: string): string => {
	const n = Number(id.split('-')[1]);
	return path.join(dir, `d${n % 8}`, `r-${id}`);
};

function arg(name: string, dflt?: string): string {
	const i = process.argv.indexOf(`--${name}`);
	const v = i >= 0 ? process.argv[i + 1] : dflt;
	if (v === undefined) throw new Error(`power-kill-records: --${name} is required`);
	return v;
}

function verify(dir: string, expectFile: string, outFile: string): boolean {
	const ids = fs.existsSync(expectFile) ? fs.readFileSync(expectFile, 'utf8').split('\n').filter(Boolean) : [];
	const missing: string[] = [];
	const bad: string[] = [];
	const logPath = path.join(dir, 'log');
	const logLines = new Set(fs.existsSync(logPath) ? fs.readFileSync(logPath, 'latin1').split('\n') : []);
	const logMissing: string[] = [];
	for (const id of ids) {
		let data: Buffer;
		try {
			data = fs.readFileSync(recordPath(dir, id));
		} catch {
			missing.push(id);
			continue;
		}
		if (!data.equals(recordBytes(id))) bad.push(`${id}(${data.length}B)`);
		if (!logLines.has(id)) logMissing.push(id);
	}
	const ok = missing.length === 0 && bad.length === 0 && logMissing.length === 0;
	const text = [
		`checked ${ids.length} missing ${missing.length} bad ${bad.length} log-missing ${logMissing.length}`,
		...(missing.length ? [`missing: ${missing.join(' ')}`] : []),
		...(bad.length ? [`bad: ${bad.join(' ')}`] : []),
		...(logMissing.length ? [`log-missing: ${logMissing.join(' ')}`] : []),
		'',
	].join('\n');
	fs.writeFileSync(outFile, text);
	fs.renameSync(outFile, `${outFile}.done`);
	return ok;
}

function fsyncPath(p: string): void {
	const fd = fs.openSync(p, 'r');
	try {
		fs.fsyncSync(fd);
	} finally {
		fs.closeSync(fd);
	}
}

async function waitFile(f: string): Promise<void> {
	const t0 = Date.now();
	while (!fs.existsSync(f)) {
		if (Date.now() - t0 > 300_000) throw new Error(`power-kill-records: no ${f} after 300 s`);
		await new Promise((r) => setTimeout(r, 20));
	}
}

/** `dmu check IMAGE`, in this process (src/cli/commands/check.ts: same function, same exit codes). */
async function checkImage(image: string, outFile: string): Promise<void> {
	let text: string;
	try {
		const r = await check(image);
		const rc = r.corruptions.length ? 2 : r.leaks.length ? 3 : 0;
		text = [`rc ${rc}`, ...r.corruptions.map((c) => `ERROR ${c}`), ...r.leaks.map((l) => `Leaked: ${l}`), ''].join('\n');
	} catch (e) {
		text = `rc 1\n${(e as Error).message}\n`;
	}
	fs.writeFileSync(outFile, text);
	fs.renameSync(outFile, `${outFile}.done`);
}

async function write(dir: string, cut: number, goFile: string, ackFile: string, maxMs: number): Promise<void> {
	await waitFile(goFile);
	for (let d = 0; d < 8; d++) fs.mkdirSync(path.join(dir, `d${d}`), { recursive: true });
	fsyncPath(dir);
	const log = fs.openSync(path.join(dir, 'log'), 'a');
	// A line of its own, in case the last boot's append was torn.
	fs.writeSync(log, `\nboot ${cut}\n`);
	fs.fsyncSync(log);
	const ack = fs.openSync(ackFile, 'a');
	const start = Date.now();
	for (let n = 1; Date.now() - start < maxMs; n++) {
		const id = `${cut}-${n}`;
		const file = recordPath(dir, id);
		const fd = fs.openSync(file, 'w');
		fs.writeSync(fd, recordBytes(id));
		fs.fsyncSync(fd);
		fs.closeSync(fd);
		if (n % 4 === 0) fsyncPath(path.dirname(file));
		fs.writeSync(log, `${id}\n`);
		fs.fsyncSync(log);
		fs.writeSync(ack, `${id}\n`);
	}
	fs.closeSync(log);
	fs.closeSync(ack);
}

const dir = arg('dir');
// Start-up time under TCG, for the log: it decides how early the script must start us.
console.log(`records: started at uptime ${fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]}`);
const has = (name: string): boolean => process.argv.includes(`--${name}`);
if (has('image')) {
	await waitFile(arg('check-go'));
	await checkImage(arg('image'), arg('check-out'));
	console.log(`records: image checked at uptime ${fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]}`);
}
if (has('verify-go')) await waitFile(arg('verify-go'));
const ok = verify(dir, arg('expect'), arg('verify-out'));
// Without --go: check only. Otherwise go on even after a failed check: the
// script records the check (the host stops the run after this cut).
if (has('go')) {
	await write(dir, Number(arg('cut')), arg('go'), arg('ack'), Number(arg('max-ms', '90000')));
}
process.exitCode = ok ? 0 : 1;
