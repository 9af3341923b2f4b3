#!/usr/bin/env node
/**
 * `replay`: list or replay a dm-log-writes log (see log.ts for the format).
 *   replay --log LOG --list-flushes          indices of flush/FUA entries
 *   replay --log LOG --list-marks            "INDEX LABEL" of every mark
 *   replay --log LOG --replay DEV --limit N  write entries [start, N) onto DEV
 *   replay --log LOG --replay DEV --until-mark L   ... up to and including mark L
 * Used by test/vm/power-cut.sh to rebuild the disk as it was at each flush.
 */
import fs from 'node:fs';
import { Command } from 'commander';
import { runMain } from '../../src/cli/run.js';
import { DmuError } from '../../src/errors.js';
import { applyEntry, isFlushPoint, readEntries, readHeader } from './log.js';

interface Opts {
	log: string;
	replay?: string;
	start: string;
	limit?: string;
	untilMark?: string;
	listFlushes?: boolean;
	listMarks?: boolean;
}

const count = (v: string, what: string): number => {
	if (!/^\d+$/.test(v)) throw new DmuError('DMU_ERR_USAGE', `${what} must be a whole number, got '${v}'`, 2);
	return Number(v);
};

function open(p: string, flags: string): number {
	try {
		return fs.openSync(p, flags);
	} catch (e) {
		throw new DmuError('DMU_ERR_OPEN', `cannot open ${p}: ${(e as Error).message}`);
	}
}

/** Size of a file or block device (fstat says 0 for a block device). */
function sizeOf(fd: number): number {
	const st = fs.fstatSync(fd);
	if (!st.isBlockDevice()) return st.size;
	const buf = Buffer.alloc(1);
	let lo = 0;
	let hi = 2 ** 50;
	// Binary search for the end: reads past a block device's end return 0 bytes.
	while (hi - lo > 512) {
		const mid = Math.floor((lo + hi) / 2 / 512) * 512;
		if (fs.readSync(fd, buf, 0, 1, mid) === 1) lo = mid;
		else hi = mid;
	}
	return hi;
}

function main(o: Opts): number {
	const modes = [o.replay !== undefined, !!o.listFlushes, !!o.listMarks].filter(Boolean).length;
	if (modes !== 1) throw new DmuError('DMU_ERR_USAGE', 'give exactly one of --replay DEV, --list-flushes, --list-marks (see --help)', 2);
	if (o.replay !== undefined && (o.limit === undefined) === (o.untilMark === undefined))
		throw new DmuError('DMU_ERR_USAGE', '--replay needs exactly one of --limit N or --until-mark LABEL', 2);
	const logFd = open(o.log, 'r');
	const hdr = readHeader(logFd);
	const entries = readEntries(logFd, hdr, sizeOf(logFd));
	if (o.listFlushes || o.listMarks) {
		const out: string[] = [];
		for (const e of entries) {
			if (o.listFlushes && isFlushPoint(e)) out.push(String(e.index));
			if (o.listMarks && e.mark !== undefined) out.push(`${e.index} ${e.mark}`);
		}
		process.stdout.write(out.length ? `${out.join('\n')}\n` : '');
		return 0;
	}
	const start = count(o.start, '--start');
	const limit = o.limit === undefined ? Number.POSITIVE_INFINITY : count(o.limit, '--limit');
	if (limit > hdr.nrEntries && limit !== Number.POSITIVE_INFINITY)
		throw new DmuError('DMU_ERR_USAGE', `--limit ${limit} is past the log's ${hdr.nrEntries} entries`, 2);
	const target = open(o.replay as string, 'r+');
	let found = o.untilMark === undefined;
	let written = 0;
	for (const e of entries) {
		if (e.index >= limit) break;
		if (e.index >= start) {
			applyEntry(logFd, target, e);
			written++;
		}
		if (e.mark !== undefined && e.mark === o.untilMark) {
			found = true;
			break;
		}
	}
	fs.fsyncSync(target);
	fs.closeSync(target);
	if (!found) throw new DmuError('DMU_ERR_NO_MARK', `no mark '${o.untilMark}' in the log`);
	process.stderr.write(`replay: ${written} entries written\n`);
	return 0;
}

const program = new Command('replay')
	.description('list or replay a dm-log-writes log onto a device or file')
	.requiredOption('--log <dev>', 'the log device (or a copy of it)')
	.option('--replay <dev>', 'write the logged entries onto DEV (which must hold the state before entry --start)')
	.option('--start <n>', 'first entry to write (earlier ones are already on DEV)', '0')
	.option('--limit <n>', 'stop before entry N (N = flush index + 1 replays up to and including that flush)')
	.option('--until-mark <label>', 'stop after the mark LABEL')
	.option('--list-flushes', 'print the index of every flush or FUA entry, one a line')
	.option('--list-marks', 'print "INDEX LABEL" for every mark entry')
	.addHelpText('after', '\nExample:\n  replay --log /dev/vdb --replay /dev/vdc --limit 120\n')
	.showHelpAfterError()
	.exitOverride()
	.action((o: Opts) => {
		process.exitCode = main(o);
	});

runMain('replay', async () => {
	await program.parseAsync(process.argv);
});
