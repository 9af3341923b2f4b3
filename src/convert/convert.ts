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
		const chunkAt = (off: bigint) => Number(size - off < BigInt(chunk) ? size - off : BigInt(chunk));
		// Two buffers per reader: the next chunk is read while this one is
		// written (the source's reads and the destination's writes overlap).
		const srcBufs = [Buffer.allocUnsafe(chunk), Buffer.allocUnsafe(chunk)];
		const baseBufs = base ? [Buffer.allocUnsafe(chunk), Buffer.allocUnsafe(chunk)] : [];
		const readChunk = async (off: bigint, i: number) => {
			const len = chunkAt(off);
			const c = await src.read(off, len, srcBufs[i % 2]);
			const b = base ? await base.read(off, len, baseBufs[i % 2]) : undefined;
			return { c, b };
		};
		let next: Promise<Awaited<ReturnType<typeof readChunk>>> | undefined = size > 0n ? readChunk(0n, 0) : undefined;
		try {
			for (let off = 0n, i = 0; off < size; off += BigInt(chunk), i++) {
				const len = chunkAt(off);
				const { c, b } = await (next as NonNullable<typeof next>);
				const nextOff = off + BigInt(chunk);
				next = nextOff < size ? readChunk(nextOff, i + 1) : undefined;
				if (c.allZero && (!b || b.allZero)) {
					stats.skipped += BigInt(len);
				} else {
					// Neighbouring pieces that need writing go out in one call.
					let from = -1;
					const writeRun = async (end: number) => {
						if (from < 0) return;
						await dst?.write(off + BigInt(from), c.data.subarray(from, end));
						stats.written += BigInt(end - from);
						from = -1;
					};
					for (let at = 0; at < len; at += piece) {
						const n = Math.min(piece, len - at);
						const mine = c.data.subarray(at, at + n);
						const same = b ? mine.equals(b.data.subarray(at, at + n)) : isZero(mine);
						if (same) {
							await writeRun(at);
							stats.skipped += BigInt(n);
						} else if (from < 0) {
							from = at;
						}
					}
					await writeRun(len);
				}
				o.onProgress?.(off + BigInt(len), size);
			}
		} finally {
			// A failed write must not leave a read running (or its rejection unhandled).
			await next?.catch(() => undefined);
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
