/**
 * qcow2 plugin glue: probe, create, open, check, info.
 *
 * Files: layout.ts (on-disk format), file.ts (bounded I/O), tables.ts
 * (L1/L2 cache), l2-entry.ts (one L2 entry, no BigInts), refcount.ts
 * (refcounts, allocator), compressed.ts, walk.ts (references for
 * check/repair), metadata.ts (open + repair), backing.ts, image.ts
 * (map/commit, allocateRuns), create.ts, check.ts. See README.md.
 */
import { stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { ImageInfo, OpenOptions, Plugin } from '../types.js';
import { checkQcow2 } from './check.js';
import { createQcow2 } from './create.js';
import { Qcow2Image } from './image.js';
import { openParts } from './metadata.js';
import { COMPRESSED, Incompat, isQcow2, OFFSET_MASK, COMPAT_LAZY_REFCOUNTS } from './layout.js';

async function info(path: string, _opts?: OpenOptions): Promise<ImageInfo> {
	const p = await openParts(path, false, true);
	try {
		const { h, tables } = p;
		let allocated = 0n;
		for (let i = 0; i < tables.l1.length; i++) {
			let off: number;
			try {
				off = tables.l2Offset(i);
			} catch {
				continue; // info describes corrupt images too; check reports the damage
			}
			if (!off) continue;
			const t = await tables.l2(off);
			for (let j = 0; j < h.l2Entries; j++) {
				const e = t.readBigUInt64BE(j * h.l2EntrySize);
				if (e & COMPRESSED || e & OFFSET_MASK) allocated++;
			}
		}
		const st = await stat(path, { bigint: true });
		const backing = h.backingFile;
		return {
			format: 'qcow2',
			virtualSize: BigInt(h.virtualSize),
			blockSize: h.clusterSize,
			actualSize: st.blocks * 512n,
			allocatedBlocks: allocated,
			...(backing !== undefined
				? {
						backing: {
							path: isAbsolute(backing) ? backing : resolve(dirname(path), backing),
							...(h.backingFormat ? { format: h.backingFormat } : {}),
						},
					}
				: {}),
			dirty: (h.incompat & Incompat.dirty) !== 0n,
			details: {
				version: h.version,
				compat: h.version === 3 ? '1.1' : '0.10',
				cluster_size: h.clusterSize,
				refcount_bits: 2 ** h.refcountOrder,
				corrupt: (h.incompat & Incompat.corrupt) !== 0n,
				lazy_refcounts: (h.compat & COMPAT_LAZY_REFCOUNTS) !== 0n,
				extended_l2: h.extendedL2,
				compression_type: h.compressionType === 1 ? 'zstd' : 'zlib',
				snapshots: h.nbSnapshots,
				l1_size: h.l1Size,
				bitmaps: h.bitmaps?.count ?? 0,
			},
		};
	} finally {
		await p.file.close();
	}
}

export const plugin: Plugin = {
	name: 'qcow2',
	probe: (header) => isQcow2(header),
	create: createQcow2,
	open: (path, opts) => Qcow2Image.open(path, opts),
	check: checkQcow2,
	info,
};

export default plugin;
