/**
 * vmdk: VMware's disk format. monolithicSparse read-write (grain
 * directory and tables, the redundant copy kept in step), streamOptimized
 * read-only (compressed grains), descriptor-based disks with flat, sparse
 * and zero extents (monolithicFlat, twoGbMaxExtent*, vmfs), parents.
 * layout.ts (format), sparse.ts (one sparse extent), open.ts, image.ts
 * (mapping), create.ts.
 */
import { isDmuError } from '../../errors.js';
import { backingDisplayPath } from '../raw/backing.js';
import type { CheckResult, ImageInfo, OpenOptions, Plugin } from '../types.js';
import { createVmdk } from './create.js';
import { FLAG_COMPRESS, MAGIC } from './layout.js';
import { openExtents, openVmdk } from './open.js';

async function scan(path: string, opts: OpenOptions, result: CheckResult | undefined) {
	const o = await openExtents(path, false, opts);
	let allocated = 0n;
	let actual = 0n;
	try {
		for (const f of o.files) actual += (await f.fh.stat({ bigint: true })).blocks * 512n;
		for (const e of o.extents) {
			const sp = e.sparse;
			if (!sp) {
				if (e.type === 'flat') allocated += e.size / BigInt(o.blockSize);
				continue;
			}
			const seen = new Map<bigint, bigint>();
			const grains = (e.size + BigInt(sp.grainBytes) - 1n) / BigInt(sp.grainBytes);
			for (let g = 0n; g < grains; g++) {
				const l = await sp.lookup(g);
				if (l.kind === 'bad') result?.corruptions.push(`${sp.file.path}: grain ${g}: ${l.why}`);
				if (l.kind === 'data' || l.kind === 'compressed') {
					allocated++;
					if (result && l.kind === 'data') {
						const other = seen.get(l.sector);
						if (other !== undefined) result.corruptions.push(`${sp.file.path}: grains ${other} and ${g} share sector ${l.sector}`);
						seen.set(l.sector, g);
						if (l.sector < sp.header.overHead) result.corruptions.push(`${sp.file.path}: grain ${g} lies in the metadata area`);
					}
				}
			}
			if (result && sp.rgd && !(sp.header.flags & FLAG_COMPRESS)) await compareRedundant(sp, result);
		}
		return { o, allocated, actual };
	} finally {
		for (const f of o.files) await f.close().catch(() => undefined);
	}
}

/** The redundant tables must say exactly what the primary ones say. */
async function compareRedundant(sp: import('./sparse.js').SparseExtent, result: CheckResult) {
	const n = sp.header.numGTEsPerGT;
	const gd = sp.gd;
	const rgd = sp.rgd as Uint32Array;
	for (let i = 0; i < gd.length; i++) {
		if ((gd[i] === 0) !== (rgd[i] === 0)) {
			result.corruptions.push(`${sp.file.path}: grain directory entry ${i} differs from its redundant copy`);
			continue;
		}
		if (gd[i] === 0) continue;
		const a = await sp.file.read(BigInt(gd[i] as number) * 512n, n * 4, 'grain table');
		const b = await sp.file.read(BigInt(rgd[i] as number) * 512n, n * 4, 'redundant grain table');
		if (!a.equals(b)) result.corruptions.push(`${sp.file.path}: grain table ${i} differs from its redundant copy`);
	}
}

export const plugin: Plugin = {
	name: 'vmdk',

	probe(header) {
		if (header.length >= 4 && header.readUInt32LE(0) === MAGIC) return true;
		return header.toString('latin1', 0, 64).includes('# Disk DescriptorFile');
	},

	create: createVmdk,
	open: openVmdk,

	async check(path, opts = {}) {
		const result: CheckResult = { corruptions: [], leaks: [], repaired: [] };
		try {
			await scan(path, opts, result);
		} catch (e) {
			if (!isDmuError(e)) throw e;
			result.corruptions.push(e.message);
		}
		return result;
	},

	async info(path, opts = {}): Promise<ImageInfo> {
		const { o, allocated, actual } = await scan(path, opts, undefined);
		const d = o.desc;
		const last = o.extents[o.extents.length - 1];
		return {
			format: 'vmdk',
			virtualSize: last ? last.start + last.size : 0n,
			blockSize: o.blockSize,
			actualSize: actual,
			allocatedBlocks: allocated,
			...(d?.parentHint && d.parentCid !== 0xffffffff ? { backing: { path: backingDisplayPath(path, d.parentHint) } } : {}),
			details: {
				subformat: d?.createType ?? 'monolithicSparse',
				extents: o.extents.length,
				cid: (d?.cid ?? 0).toString(16).padStart(8, '0'),
			},
		};
	},
};
