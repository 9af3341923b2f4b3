/**
 * Reader of a dm-log-writes log (kernel drivers/md/dm-log-writes.c) and
 * replay of its first entries onto a device. The kernel logs every write
 * that reached the device under it, in completion order, plus flush, FUA,
 * discard and mark entries; replaying a prefix up to a flush or FUA entry
 * gives the disk exactly as a power cut at that moment could leave it.
 *
 * Layout (little-endian, "sector" = the log device's logical block size):
 * - sector 0: super {u64 magic, u64 version, u64 nr_entries, u32 sectorsize}
 * - then entries, each starting on a sector: {u64 sector, u64 nr_sectors,
 *   u64 flags, u64 data_len}. A mark's label (data_len bytes) follows the
 *   header in the same sector; a write's data (nr_sectors sectors) fills
 *   the sectors after the header. Discards carry no data.
 * Entry sector and nr_sectors count in the same sectorsize units.
 */
import fs from 'node:fs';
import { DmuError } from '../../src/errors.js';

export const LOG_MAGIC = 0x6a736677736872n;
export const LOG_VERSION = 1n;
export const FLAG_FLUSH = 1;
export const FLAG_FUA = 2;
export const FLAG_DISCARD = 4;
export const FLAG_MARK = 8;
export const FLAG_METADATA = 16;
const KNOWN_FLAGS = FLAG_FLUSH | FLAG_FUA | FLAG_DISCARD | FLAG_MARK | FLAG_METADATA;
const HEADER = 32;

export interface LogEntry {
	/** Position in the log, from 0. */
	index: number;
	/** Byte offset on the logged device. */
	offset: number;
	/** Bytes written (or discarded) there; 0 for a pure flush or a mark. */
	length: number;
	flags: number;
	/** Label of a mark entry. */
	mark?: string;
	/** Byte offset of the data in the log (writes only). */
	dataAt: number;
}

export interface LogHeader {
	nrEntries: number;
	sectorSize: number;
}

const bad = (msg: string) => new DmuError('DMU_ERR_BAD_LOG', msg, 2);

function readAt(fd: number, len: number, pos: number): Buffer {
	const buf = Buffer.alloc(len);
	let done = 0;
	while (done < len) {
		const n = fs.readSync(fd, buf, done, len - done, pos + done);
		if (n === 0) break;
		done += n;
	}
	return done === len ? buf : buf.subarray(0, done);
}

const safe = (v: bigint, what: string): number => {
	if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`${what} ${v} is out of range`);
	return Number(v);
};

export function readHeader(fd: number): LogHeader {
	const s = readAt(fd, HEADER + 4, 0);
	if (s.length < 28) throw bad('log is truncated: no super block');
	const magic = s.readBigUInt64LE(0);
	if (magic !== LOG_MAGIC) throw bad(`not a dm-log-writes log (magic 0x${magic.toString(16)}, want 0x${LOG_MAGIC.toString(16)})`);
	const version = s.readBigUInt64LE(8);
	if (version !== LOG_VERSION) throw bad(`unsupported log version ${version} (this tool reads version ${LOG_VERSION})`);
	const sectorSize = s.readUInt32LE(24);
	if (sectorSize < 512 || sectorSize > 65536 || (sectorSize & (sectorSize - 1)) !== 0)
		throw bad(`bad log sector size ${sectorSize}`);
	return { nrEntries: safe(s.readBigUInt64LE(16), 'entry count'), sectorSize };
}

/** Every entry of the log, in order; throws a one-line DmuError on a damaged or truncated log. */
export function* readEntries(fd: number, hdr: LogHeader, size: number): Generator<LogEntry> {
	const ss = hdr.sectorSize;
	let pos = ss; // entries start on the sector after the super block
	for (let index = 0; index < hdr.nrEntries; index++) {
		if (pos + ss > size) throw bad(`log is truncated at entry ${index} of ${hdr.nrEntries} (offset ${pos}, log is ${size} bytes)`);
		const h = readAt(fd, ss, pos);
		const sector = safe(h.readBigUInt64LE(0), `entry ${index} sector`);
		const nrSectors = safe(h.readBigUInt64LE(8), `entry ${index} length`);
		const flags = safe(h.readBigUInt64LE(16), `entry ${index} flags`);
		const dataLen = safe(h.readBigUInt64LE(24), `entry ${index} data length`);
		if ((flags & ~KNOWN_FLAGS) !== 0) throw bad(`entry ${index} has unknown flags 0x${flags.toString(16)}`);
		pos += ss;
		const e: LogEntry = { index, offset: sector * ss, length: nrSectors * ss, flags, dataAt: pos };
		if (flags & FLAG_MARK) {
			if (dataLen > ss - HEADER) throw bad(`entry ${index}: mark label of ${dataLen} bytes does not fit its sector`);
			e.mark = h.subarray(HEADER, HEADER + dataLen).toString('utf8').replace(/\0+$/, '');
			e.length = 0;
		} else if (dataLen > 0) {
			// Inline data (no bio pages): data_len bytes, sector-padded.
			e.length = dataLen;
			pos += Math.ceil(dataLen / ss) * ss;
		} else if (!(flags & FLAG_DISCARD)) {
			pos += e.length;
		}
		if (pos > size) throw bad(`log is truncated inside entry ${index} of ${hdr.nrEntries}`);
		yield e;
	}
}

/** Entries where the disk's state is defined: flushes and FUA writes. */
export const isFlushPoint = (e: LogEntry): boolean => (e.flags & (FLAG_FLUSH | FLAG_FUA)) !== 0;

const CHUNK = 1 << 20;

/** Apply one entry to the target: copy its data, or write zeros over a discard. */
export function applyEntry(logFd: number, targetFd: number, e: LogEntry): void {
	if (e.length === 0 || e.mark !== undefined) return;
	const zeros = (e.flags & FLAG_DISCARD) !== 0;
	for (let done = 0; done < e.length; done += CHUNK) {
		const n = Math.min(CHUNK, e.length - done);
		const buf = zeros ? Buffer.alloc(n) : readAt(logFd, n, e.dataAt + done);
		if (buf.length !== n) throw bad(`log is truncated inside the data of entry ${e.index}`);
		let w = 0;
		while (w < n) w += fs.writeSync(targetFd, buf, w, n - w, e.offset + done + w);
	}
}
