/**
 * Who references which host cluster: the header, the refcount structure,
 * the active and snapshot L1/L2 tables with their data clusters, the
 * snapshot table and persistent bitmaps. This is what QEMU's check and
 * dirty-bit repair compare stored refcounts against.
 */
import type { ImageFile } from './file.js';
import { AUTOCLEAR_BITMAPS, COMPRESSED, compressedRef, type Header, MAX_L1_BYTES, OFFSET_MASK, ZERO_FLAG } from './layout.js';

export interface Walk {
	/** Expected refcount per host cluster index. */
	refs: Map<number, number>;
	/** Metadata that points somewhere impossible (each a corruption). */
	errors: string[];
}

export interface WalkSource {
	file: ImageFile;
	h: Header;
	/** Active L1 entries (may hold changes not yet written). */
	l1: readonly bigint[];
	/** Active L2 table by offset (cache first, then file). */
	l2(off: number): Promise<Buffer>;
	refTable: readonly number[];
	refTableOffset: number;
	refTableClusters: number;
}

export async function collectReferences(src: WalkSource): Promise<Walk> {
	const { file, h } = src;
	const cs = h.clusterSize;
	const refs = new Map<number, number>();
	const errors: string[] = [];
	const inc = (c: number): void => {
		refs.set(c, (refs.get(c) ?? 0) + 1);
	};
	const incRange = (off: number, len: number): void => {
		if (len <= 0) return;
		for (let c = Math.floor(off / cs); c <= Math.floor((off + len - 1) / cs); c++) inc(c);
	};
	const clusterOk = (off: number, what: string): boolean => {
		if (off % cs !== 0 || off + cs > file.size) {
			errors.push(`${what} at offset ${off} is unaligned or beyond the end of the file`);
			return false;
		}
		return true;
	};

	inc(0);
	incRange(src.refTableOffset, src.refTableClusters * cs);
	src.refTable.forEach((off) => {
		if (off && clusterOk(off, 'refcount block')) inc(off / cs);
	});

	const walkL2 = (t: Buffer, l2off: number): void => {
		for (let i = 0; i < h.l2Entries; i++) {
			const e = t.readBigUInt64BE(i * h.l2EntrySize);
			if (e & COMPRESSED) {
				const r = compressedRef(e, h.clusterBits);
				if (r.offset === 0 || r.offset >= file.size) {
					errors.push(`compressed cluster (L2 at ${l2off}, entry ${i}) points beyond the end of the file`);
					continue;
				}
				incRange(r.sectorStart, r.sectorBytes);
				continue;
			}
			const host = Number(e & OFFSET_MASK);
			if (host === 0) continue;
			if (h.version === 2 && e & ZERO_FLAG) errors.push(`zero flag in a version 2 image (L2 at ${l2off}, entry ${i})`);
			if (host % cs !== 0 || host >= file.size) {
				// A last data cluster cut short by the end of the file is tolerated (reads as zeros).
				errors.push(`data cluster ${host} (L2 at ${l2off}, entry ${i}) is unaligned or beyond the end of the file`);
				continue;
			}
			inc(host / cs);
		}
	};

	const walkL1 = async (l1: readonly bigint[], active: boolean, what: string): Promise<void> => {
		for (let i = 0; i < l1.length; i++) {
			const off = Number((l1[i] ?? 0n) & OFFSET_MASK);
			if (!off) continue;
			if (!clusterOk(off, `${what} L2 table (L1 index ${i})`)) continue;
			inc(off / cs);
			const t = active ? await src.l2(off) : await file.read(off, cs, 'L2 table');
			walkL2(t, off);
		}
	};

	if (h.l1Size) incRange(h.l1Offset, h.l1Size * 8);
	await walkL1(src.l1, true, 'active');

	if (h.nbSnapshots) {
		let pos = h.snapshotsOffset;
		for (let s = 0; s < h.nbSnapshots; s++) {
			if (pos + 40 > file.size) {
				errors.push(`snapshot ${s} lies beyond the end of the file`);
				break;
			}
			const e = await file.read(pos, 40, 'snapshot table');
			const l1off = Number(e.readBigUInt64BE(0));
			const l1n = e.readUInt32BE(8);
			const len = 40 + e.readUInt32BE(36) + e.readUInt16BE(12) + e.readUInt16BE(14);
			pos += Math.ceil(len / 8) * 8;
			if (l1n * 8 > MAX_L1_BYTES || l1off % cs !== 0 || l1off + l1n * 8 > file.size || (l1n && !l1off)) {
				errors.push(`snapshot ${s} L1 table (${l1off}, ${l1n} entries) is invalid`);
				continue;
			}
			incRange(l1off, l1n * 8);
			const raw = l1n ? await file.read(l1off, l1n * 8, 'snapshot L1 table') : Buffer.alloc(0);
			const l1: bigint[] = [];
			for (let i = 0; i < l1n; i++) l1.push(raw.readBigUInt64BE(i * 8));
			await walkL1(l1, false, `snapshot ${s}`);
		}
		if (pos > file.size) errors.push('snapshot table lies beyond the end of the file');
		else incRange(h.snapshotsOffset, pos - h.snapshotsOffset);
	}

	// Without the autoclear bit the bitmaps are stale and QEMU ignores them (their clusters are leaks).
	if (h.bitmaps && h.autoclear & AUTOCLEAR_BITMAPS) {
		const { dirOffset, dirSize, count } = h.bitmaps;
		incRange(dirOffset, dirSize);
		const dir = await file.read(dirOffset, dirSize, 'bitmap directory');
		let p = 0;
		for (let b = 0; b < count && p + 24 <= dir.length; b++) {
			const toff = Number(dir.readBigUInt64BE(p));
			const tsize = dir.readUInt32BE(p + 8);
			const len = 24 + dir.readUInt32BE(p + 20) + dir.readUInt16BE(p + 18);
			p += Math.ceil(len / 8) * 8;
			if (toff % cs !== 0 || toff + tsize * 8 > file.size || tsize * 8 > MAX_L1_BYTES) {
				errors.push(`bitmap ${b} table is invalid`);
				continue;
			}
			incRange(toff, tsize * 8);
			const t = await file.read(toff, tsize * 8, 'bitmap table');
			for (let i = 0; i < tsize; i++) {
				const off = Number(t.readBigUInt64BE(i * 8) & OFFSET_MASK);
				if (off && clusterOk(off, `bitmap ${b} data`)) inc(off / cs);
			}
		}
	}
	return { refs, errors };
}
