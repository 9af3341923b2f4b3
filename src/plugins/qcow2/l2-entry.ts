/**
 * Reading and writing single L2 entries without BigInts. The map() path
 * goes through readBigUInt64BE; the bulk allocator touches one entry per
 * cluster of a conversion, where a BigInt per entry was measurable garbage.
 * Host offsets are below 2^56 (OFFSET_MASK), so the high word fits a number.
 */
import type { Header } from './layout.js';

const COPIED_HIGH_BIT = 0x80000000;
const TWO_32 = 2 ** 32;

/** True when entry `i` names nothing: no host cluster, no flags (and, extended, no subcluster bits). */
export function isEmptyEntry(table: Buffer, h: Header, i: number): boolean {
	const pos = i * h.l2EntrySize;
	if (table.readUInt32BE(pos) !== 0 || table.readUInt32BE(pos + 4) !== 0) return false;
	return !h.extendedL2 || (table.readUInt32BE(pos + 8) === 0 && table.readUInt32BE(pos + 12) === 0);
}

/** Make entry `i` a data cluster at `host` that we own alone (COPIED; extended: every subcluster allocated). */
export function setDataEntry(table: Buffer, h: Header, i: number, host: number): void {
	const pos = i * h.l2EntrySize;
	table.writeUInt32BE((COPIED_HIGH_BIT | Math.floor(host / TWO_32)) >>> 0, pos);
	table.writeUInt32BE(host % TWO_32, pos + 4);
	if (h.extendedL2) {
		table.writeUInt32BE(0, pos + 8);
		table.writeUInt32BE(0xffffffff, pos + 12);
	}
}
