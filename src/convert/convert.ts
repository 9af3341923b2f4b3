/**
 * The conversion engine behind `dmu convert`: any format dmu reads to any
 * format it writes. The source is read through its plugin's mappings (so
 * backing chains are flattened); the destination is created by its plugin
 * and written through BlockEngine, block by block, skipping what needs no
 * writing: blocks that read as zeros (a new image already reads zeros),
 * or, with a backing file (-B), blocks equal to the backing file's.
 */
import { type FileHandle, realpath, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { DmuError } from '../errors.js';
import { BlockEngine } from '../plugins/engine.js';
import { zeroOut } from '../plugins/raw/io.js';
import { loadPlugin } from '../plugins/registry.js';
import { placeRange, runAllocatorOf } from './bulk-place.js';
import { type Chunk, fillGaps, pageAligned, type Ranges, SourceReader } from './source.js';

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

/** Chunks whose writes may be in flight at once. */
const WRITE_DEPTH = 2;

/** Chunk buffers per reader: one being read, the others being written. */
const BUFFERS = WRITE_DEPTH + 1;

/**
 * Flush-behind: once this many bytes were written since the last one, an
 * fdatasync of the destination starts (not awaited; one at a time), so the
 * disk writes back while the copy goes on instead of all at close. Without
 * it the final fdatasync of a 4 GiB conversion was a third of its time.
 */
const SYNC_EVERY = 32 * 1024 * 1024;

/** Most buffers in one pwritev (Linux takes 1024). */
const MAX_IOV = 1024;

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

/** Bytes that go at one place of one file, maybe from several buffers (a pwritev). */
interface WriteOp {
	file: FileHandle;
	pos: number;
	bufs: Buffer[];
	len: number;
}

async function writeOp(op: WriteOp): Promise<void> {
	let bufs = op.bufs;
	let pos = op.pos;
	let left = op.len;
	while (left > 0) {
		const { bytesWritten } = bufs.length === 1 ? await op.file.write(bufs[0]!, 0, bufs[0]!.length, pos) : await op.file.writev(bufs, pos);
		if (bytesWritten <= 0) throw new DmuError('DMU_ERR_IO', 'convert: the destination accepted no bytes');
		left -= bytesWritten;
		pos += bytesWritten;
		if (left === 0) break;
		// A short write: go on from where it stopped.
		let skip = bytesWritten;
		while (skip >= bufs[0]!.length) skip -= bufs.shift()!.length;
		bufs = [bufs[0]!.subarray(skip), ...bufs.slice(1)];
	}
}

/**
 * Blocks of zeros are not written (sparse stays sparse), which is right
 * for a new file, which reads zeros. A block device holds what it held
 * before: zero the disk's length first (BLKZEROOUT through blkdiscard,
 * which the kernel does with WRITE ZEROES where the device has it).
 */
async function zeroDevice(path: string, size: bigint): Promise<void> {
	await zeroOut(path, 0n, size).catch((e: Error) => {
		throw new DmuError('DMU_ERR_IO', `convert: ${e.message} (before writing to it)`);
	});
}

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
		const engine = dst;
		const piece = dst.image.blockSize;
		const chunk = Math.max(CHUNK, piece, src.image.blockSize);
		const stats: ConvertStats = { size, written: 0n, skipped: 0n };
		const chunkAt = (off: bigint) => Number(size - off < BigInt(chunk) ? size - off : BigInt(chunk));
		const nChunks = Number((size + BigInt(chunk) - 1n) / BigInt(chunk));
		const bufs = pageAligned(chunk, base ? 2 * BUFFERS : BUFFERS);
		const srcBufs = bufs.slice(0, BUFFERS);
		const baseBufs = bufs.slice(BUFFERS);
		// A raw destination is its file: nothing to ask per block.
		const linearDst = dst.image.capabilities.linear === true && dst.files.length > 0;
		// A qcow2 destination allocates a run of clusters per call, not one map() each.
		const allocator = linearDst ? undefined : runAllocatorOf(dst.image);
		if (linearDst && (await stat(o.dst)).isBlockDevice()) await zeroDevice(o.dst, size);
		// The files written (a backing file under DST is only read).
		const outFiles = engine.files.filter((_, k) => engine.image.devices[k]?.writable);

		/** Byte ranges of chunk `c` to write: whole destination blocks that differ from what DST reads already. */
		const toWrite = (c: Chunk, b: Chunk | undefined, len: number): Ranges => {
			const out: Ranges = [];
			const add = (s: number, e: number) => {
				const last = out[out.length - 1];
				if (last && last[1] === s) last[1] = e;
				else out.push([s, e]);
			};
			if (b) {
				// Against a backing file every block is compared, holes too.
				if (c.ranges.length === 0 && b.ranges.length === 0) return out;
				fillGaps(c.data, c.ranges, 0, len);
				fillGaps(b.data, b.ranges, 0, len);
				for (let at = 0; at < len; at += piece) {
					const e = Math.min(at + piece, len);
					if (!c.data.subarray(at, e).equals(b.data.subarray(at, e))) add(at, e);
				}
				return out;
			}
			// Only blocks the source has bytes in are looked at (a new image
			// reads zeros already); their bytes the source did not fill are
			// zeros, and a block of zeros is not written (sparse stays sparse).
			let at = -1;
			for (const [s, e] of c.ranges) {
				for (let p = Math.max(s - (s % piece), at); p < e; p += piece) {
					const pe = Math.min(p + piece, len);
					fillGaps(c.data, c.ranges, p, pe);
					if (!isZero(c.data.subarray(p, pe))) add(p, pe);
					at = pe;
				}
			}
			return out;
		};

		/** Where the ranges of the chunk at `off` go: pwritev ops, neighbours on the file merged. */
		const place = async (off: bigint, data: Buffer, ranges: Ranges): Promise<WriteOp[]> => {
			const ops: WriteOp[] = [];
			const put = (file: FileHandle, pos: number, buf: Buffer) => {
				const last = ops[ops.length - 1];
				if (last && last.file === file && last.pos + last.len === pos && last.bufs.length < MAX_IOV) {
					// Holes in the source between two runs: the buffers differ,
					// the places on the file follow each other (qcow2 allocates
					// in order), so one pwritev takes both.
					const tail = last.bufs[last.bufs.length - 1]!;
					if (tail.buffer === buf.buffer && tail.byteOffset + tail.length === buf.byteOffset) {
						last.bufs[last.bufs.length - 1] = Buffer.from(tail.buffer, tail.byteOffset, tail.length + buf.length);
					} else {
						last.bufs.push(buf);
					}
					last.len += buf.length;
				} else {
					ops.push({ file, pos, bufs: [buf], len: buf.length });
				}
			};
			for (const [s, e] of ranges) {
				if (linearDst) {
					put(engine.files[0]!, Number(off) + s, data.subarray(s, e));
					continue;
				}
				if (allocator) {
					for (const r of await placeRange(allocator, piece, Number(off), s, e)) put(engine.files[0]!, r.pos, data.subarray(r.from, r.from + r.len));
					continue;
				}
				for (const r of await engine.place(off + BigInt(s), e - s)) put(r.file, r.pos, data.subarray(s + r.from, s + r.from + r.len));
			}
			return ops;
		};

		// The pipeline: chunk i is read into buffer i % BUFFERS while the
		// writes of the two chunks before it go on (two writers beat one on
		// the bench VM: ~3.0 s against ~3.9 s for 1 GiB into qcow2); a buffer
		// is read into again only once its last chunk's writes are done.
		// Every SYNC_EVERY bytes an fdatasync starts behind the writes.
		const writesOf: Array<Promise<void>> = [];
		let syncing: Promise<unknown> | undefined;
		let sinceSync = 0;
		let shown = 0n;
		const readChunk = async (i: number) => {
			await writesOf[i - BUFFERS];
			const off = BigInt(i) * BigInt(chunk);
			const len = chunkAt(off);
			const [c, b] = await Promise.all([src.read(off, len, srcBufs[i % BUFFERS]), base?.read(off, len, baseBufs[i % BUFFERS])]);
			return { c, b, off, len };
		};
		const pending: Array<Promise<unknown>> = [];
		const track = <T>(p: Promise<T>): Promise<T> => {
			p.catch(() => undefined); // awaited in order below, or in the finally; never unhandled meanwhile
			pending.push(p);
			return p;
		};
		try {
			let next = nChunks > 0 ? track(readChunk(0)) : undefined;
			for (let i = 0; i < nChunks; i++) {
				const { c, b, off, len } = await (next as NonNullable<typeof next>);
				next = i + 1 < nChunks ? track(readChunk(i + 1)) : undefined;
				const ranges = toWrite(c, b, len);
				const ops = await place(off, c.data, ranges);
				const bytes = ranges.reduce((n, [s, e]) => n + e - s, 0);
				stats.written += BigInt(bytes);
				stats.skipped += BigInt(len - bytes);
				const writing = track(
					(writesOf[i - WRITE_DEPTH] ?? Promise.resolve()).then(async () => {
						await Promise.all(ops.map(writeOp));
						sinceSync += bytes;
						if (sinceSync >= SYNC_EVERY && !syncing) {
							sinceSync = 0;
							const done = Promise.all(outFiles.map((f) => f.datasync())).finally(() => {
								syncing = undefined;
							});
							syncing = track(done);
						}
					}),
				);
				writesOf[i] = writing;
				// Progress counts what is written, not what is read.
				void writing.then(
					() => {
						if (off + BigInt(len) > shown) shown = off + BigInt(len);
						o.onProgress?.(shown, size);
					},
					() => undefined,
				);
			}
			await Promise.all(writesOf.slice(-WRITE_DEPTH));
			await syncing;
		} finally {
			// A failure must not leave a read or write running (or its rejection unhandled).
			await Promise.allSettled(pending);
		}
		await Promise.all(pending);
		await dst.close();
		dst = undefined;
		return stats;
	} finally {
		await dst?.close().catch(() => undefined);
		await base?.close().catch(() => undefined);
		await src.close().catch(() => undefined);
	}
}
