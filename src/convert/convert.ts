/**
 * The conversion engine behind `dmu convert`: any format dmu reads to any
 * format it writes. The source is read through its plugin's mappings (so
 * backing chains are flattened); the destination is created by its plugin
 * and written through BlockEngine, block by block, skipping what needs no
 * writing: blocks that read as zeros (a new image already reads zeros),
 * or, with a backing file (-B), blocks equal to the backing file's.
 */
import { realpath } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { DmuError } from '../errors.js';
import { BlockEngine } from '../plugins/engine.js';
import { loadPlugin } from '../plugins/registry.js';
import { SourceReader } from './source.js';

export interface ConvertOptions {
	src: string;
	/** Probed when absent. */
	srcFormat?: string;
	dst: string;
	dstFormat: string;
	/** Keep this backing file under the destination (only differences are written). */
	backing?: string;
	backingFormat?: string;
	/** Destination block / cluster size. */
	blockSize?: number;
	/** Destination -o options (e.g. subformat=fixed). */
	options?: Record<string, string>;
	/** Extra directories source backing files may live in. */
	allowedRoots?: string[];
	onProgress?: (done: bigint, total: bigint) => void;
}

export interface ConvertStats {
	size: bigint;
	/** Bytes written to the destination. */
	written: bigint;
	/** Bytes skipped (zeros, or equal to the backing file). */
	skipped: bigint;
}

const CHUNK = 4 * 1024 * 1024;

const ZEROS = Buffer.alloc(64 * 1024);

const isZero = (b: Buffer) => {
	// Buffer.equals is a memcmp; reading BigInts 8 bytes at a time allocated
	// one per word and made the scan (and its GC) most of a convert's time.
	for (let at = 0; at < b.length; at += ZEROS.length) {
		const n = Math.min(ZEROS.length, b.length - at);
		if (!b.subarray(at, at + n).equals(ZEROS.subarray(0, n))) return false;
	}
	return true;
};

export async function convert(o: ConvertOptions): Promise<ConvertStats> {
	const srcReal = await realpath(o.src).catch(() => {
		throw new DmuError('DMU_ERR_OPEN', `cannot open ${o.src}: no such file`);
	});
	const dstReal = await realpath(o.dst).catch(() => resolve(o.dst));
	if (srcReal === dstReal) throw new DmuError('DMU_ERR_USAGE', 'convert: source and destination are the same file');
	const dstPlugin = await loadPlugin(o.dstFormat);
	const src = await SourceReader.open(o.src, o.srcFormat, { allowedRoots: o.allowedRoots ?? [] });
	let base: SourceReader | undefined;
	let dst: BlockEngine | undefined;
	try {
		if (o.backing) base = await SourceReader.open(o.backing, o.backingFormat, { allowedRoots: o.allowedRoots ?? [] });
		const size = src.size;
		await dstPlugin.create(o.dst, {
			size,
			...(o.backing ? { base: o.backing, ...(o.backingFormat ? { baseFormat: o.backingFormat } : {}) } : {}),
			...(o.blockSize ? { blockSize: o.blockSize } : {}),
			...(o.options ? { options: o.options } : {}),
		});
		const roots = o.backing ? [dirname(resolve(o.backing))] : [];
		dst = await BlockEngine.open(dstPlugin, o.dst, { allowedRoots: roots });
		if (dst.image.virtualSize < size) {
			throw new DmuError('DMU_ERR_USAGE', `convert: ${o.dstFormat} made a ${dst.image.virtualSize}-byte disk, the source has ${size}`);
		}
		const piece = dst.image.blockSize;
		const chunk = Math.max(CHUNK, piece, src.image.blockSize);
		const stats: ConvertStats = { size, written: 0n, skipped: 0n };
		for (let off = 0n; off < size; off += BigInt(chunk)) {
			const len = Number(size - off < BigInt(chunk) ? size - off : BigInt(chunk));
			const c = await src.read(off, len);
			const b = base ? await base.read(off, len) : undefined;
			if (c.allZero && (!b || b.allZero)) {
				stats.skipped += BigInt(len);
			} else {
				for (let at = 0; at < len; at += piece) {
					const n = Math.min(piece, len - at);
					const mine = c.data.subarray(at, at + n);
					const same = b ? mine.equals(b.data.subarray(at, at + n)) : isZero(mine);
					if (same) {
						stats.skipped += BigInt(n);
						continue;
					}
					await dst.write(off + BigInt(at), mine);
					stats.written += BigInt(n);
				}
			}
			o.onProgress?.(off + BigInt(len), size);
		}
		await dst.close();
		dst = undefined;
		return stats;
	} finally {
		await dst?.close().catch(() => undefined);
		await base?.close().catch(() => undefined);
		await src.close().catch(() => undefined);
	}
}
