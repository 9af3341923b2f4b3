/**
 * The dm-log-writes reader and replay tool (tools/log-writes/) on logs
 * built here in the kernel's layout; the VM test (test/vm/power-cut.test.ts)
 * runs it on a log the real kernel wrote.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import t from 'tap';
import { FLAG_DISCARD, FLAG_FLUSH, FLAG_FUA, FLAG_MARK, LOG_MAGIC, readEntries, readHeader } from '../../tools/log-writes/log.js';
import { REPO_ROOT } from '../support/vm.js';

const TOOL = path.join(REPO_ROOT, 'dist/tools/log-writes/replay.js');
const SS = 512;

type Spec = { sector?: number; data?: Buffer; nr?: number; flags?: number; mark?: string };

/** A log as dm-log-writes lays it out (512-byte log sectors). */
function buildLog(entries: Spec[], opts: { magic?: bigint; nrEntries?: number } = {}): Buffer {
	const parts: Buffer[] = [];
	const sup = Buffer.alloc(SS);
	sup.writeBigUInt64LE(opts.magic ?? LOG_MAGIC, 0);
	sup.writeBigUInt64LE(1n, 8);
	sup.writeBigUInt64LE(BigInt(opts.nrEntries ?? entries.length), 16);
	sup.writeUInt32LE(SS, 24);
	parts.push(sup);
	for (const e of entries) {
		const h = Buffer.alloc(SS);
		const nr = e.nr ?? (e.data ? e.data.length / SS : 0);
		h.writeBigUInt64LE(BigInt(e.sector ?? 0), 0);
		h.writeBigUInt64LE(BigInt(nr), 8);
		h.writeBigUInt64LE(BigInt((e.flags ?? 0) | (e.mark ? FLAG_MARK : 0)), 16);
		h.writeBigUInt64LE(BigInt(e.mark ? e.mark.length + 1 : 0), 24);
		if (e.mark) h.write(e.mark, 32);
		parts.push(h);
		if (e.data) parts.push(e.data);
	}
	return Buffer.concat(parts);
}

const fill = (byte: number, sectors: number) => Buffer.alloc(sectors * SS, byte);

const LOG: Spec[] = [
	{ sector: 0, data: fill(0xaa, 2) }, // 0
	{ sector: 8, data: fill(0xbb, 1) }, // 1
	{ flags: FLAG_FLUSH }, // 2: pure flush
	{ mark: 'rec-1' }, // 3
	{ sector: 1, data: fill(0xcc, 1), flags: FLAG_FUA }, // 4
	{ sector: 0, nr: 1, flags: FLAG_DISCARD }, // 5: discard, no data in the log
	{ mark: 'rec-2' }, // 6
	{ sector: 9, data: fill(0xdd, 3), flags: FLAG_FLUSH | FLAG_FUA }, // 7
];

const DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'log-writes-'));
t.teardown(() => fs.rmSync(DIR, { recursive: true, force: true }));

function tmp(_t: unknown, name: string, data: Buffer): string {
	const p = path.join(DIR, `${name}-${Math.random().toString(36).slice(2)}`);
	fs.writeFileSync(p, data);
	return p;
}

t.test('entries parse with offsets, flags, marks and data positions', async (t) => {
	const p = tmp(t, 'log', buildLog(LOG));
	const fd = fs.openSync(p, 'r');
	const hdr = readHeader(fd);
	t.same(hdr, { nrEntries: 8, sectorSize: 512 });
	const es = [...readEntries(fd, hdr, fs.fstatSync(fd).size)];
	fs.closeSync(fd);
	t.same(
		es.map((e) => [e.index, e.offset, e.length, e.flags, e.mark ?? null]),
		[
			[0, 0, 1024, 0, null],
			[1, 4096, 512, 0, null],
			[2, 0, 0, FLAG_FLUSH, null],
			[3, 0, 0, FLAG_MARK, 'rec-1'],
			[4, 512, 512, FLAG_FUA, null],
			[5, 0, 512, FLAG_DISCARD, null],
			[6, 0, 0, FLAG_MARK, 'rec-2'],
			[7, 9 * 512, 1536, FLAG_FLUSH | FLAG_FUA, null],
		],
	);
	// Data follows its header sector; flushes, marks and discards take the header sector only.
	t.same(
		es.map((e) => e.dataAt),
		[1024, 2560, 3584, 4096, 4608, 5632, 6144, 6656],
	);
});

t.test('the CLI lists flush points and marks', async (t) => {
	const log = tmp(t, 'log', buildLog(LOG));
	t.equal((await execa('node', [TOOL, '--log', log, '--list-flushes'])).stdout, '2\n4\n7');
	t.equal((await execa('node', [TOOL, '--log', log, '--list-marks'])).stdout, '3 rec-1\n6 rec-2');
});

t.test('replay up to a point, in one go or in steps, gives the same disk', async (t) => {
	const log = tmp(t, 'log', buildLog(LOG));
	const expectAt = (n: number): Buffer => {
		const d = Buffer.alloc(16 * SS);
		if (n > 0) fill(0xaa, 2).copy(d, 0);
		if (n > 1) fill(0xbb, 1).copy(d, 8 * SS);
		if (n > 4) fill(0xcc, 1).copy(d, SS);
		if (n > 5) d.fill(0, 0, SS);
		if (n > 7) fill(0xdd, 3).copy(d, 9 * SS);
		return d;
	};
	for (const n of [0, 3, 5, 6, 8]) {
		const disk = tmp(t, `disk${n}`, Buffer.alloc(16 * SS));
		await execa('node', [TOOL, '--log', log, '--replay', disk, '--limit', String(n)]);
		t.ok(fs.readFileSync(disk).equals(expectAt(n)), `--limit ${n}`);
	}
	const step = tmp(t, 'step', Buffer.alloc(16 * SS));
	let prev = 0;
	for (const n of [2, 5, 8]) {
		await execa('node', [TOOL, '--log', log, '--replay', step, '--start', String(prev), '--limit', String(n)]);
		t.ok(fs.readFileSync(step).equals(expectAt(n)), `steps up to ${n}`);
		prev = n;
	}
	const m = tmp(t, 'mark', Buffer.alloc(16 * SS));
	await execa('node', [TOOL, '--log', log, '--replay', m, '--until-mark', 'rec-2']);
	t.ok(fs.readFileSync(m).equals(expectAt(7)), '--until-mark rec-2 stops after entry 6');
});

t.test('bad logs and bad usage are one clear line', async (t) => {
	const run = async (args: string[]) => {
		const r = await execa('node', [TOOL, ...args], { reject: false });
		t.equal(r.stderr.split('\n').length, 1, `one line: ${r.stderr}`);
		t.notMatch(r.stderr, /at .*\.js:\d+/, 'no stack trace');
		return r;
	};
	const disk = tmp(t, 'disk', Buffer.alloc(16 * SS));
	let r = await run(['--log', tmp(t, 'magic', buildLog(LOG, { magic: 0x1234n })), '--list-flushes']);
	t.equal(r.exitCode, 2);
	t.match(r.stderr, /not a dm-log-writes log \(magic 0x1234/);
	const whole = buildLog(LOG);
	r = await run(['--log', tmp(t, 'cut', whole.subarray(0, whole.length - 700)), '--list-flushes']);
	t.equal(r.exitCode, 2);
	t.match(r.stderr, /log is truncated/);
	r = await run(['--log', tmp(t, 'more', buildLog(LOG, { nrEntries: 20 })), '--list-marks']);
	t.match(r.stderr, /log is truncated at entry 8 of 20/);
	r = await run(['--log', tmp(t, 'tiny', Buffer.alloc(10)), '--list-marks']);
	t.match(r.stderr, /no super block/);
	r = await run(['--log', tmp(t, 'ok', whole), '--replay', disk, '--until-mark', 'nope']);
	t.match(r.stderr, /no mark 'nope'/);
	r = await run(['--log', tmp(t, 'ok2', whole), '--replay', disk]);
	t.match(r.stderr, /exactly one of --limit N or --until-mark/);
	r = await run(['--log', tmp(t, 'ok3', whole), '--replay', disk, '--limit', '99']);
	t.match(r.stderr, /past the log's 8 entries/);
	r = await run(['--log', '/nonexistent/log', '--list-marks']);
	t.match(r.stderr, /cannot open \/nonexistent\/log/);
});
