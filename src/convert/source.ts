/**
 * Reading a whole image fast, for conversion: ask the plugin where each
 * block lives, skip zero blocks without reading, and merge neighbouring
 * blocks that sit next to each other on one device into one read (a
 * 512-byte-cluster qcow would otherwise cost a read per sector).
 *
 * Data a plugin materialises (compressed clusters, partial blocks) goes
 * to an in-memory scratch area that lives only until the chunk is read.
 */
import { stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { DmuError } from '../errors.js';
import { ImageFile } from '../plugins/raw/io.js';
import { pluginFor } from '../plugins/registry.js';
import type { Image, OpenOptions, ScratchArea } from '../plugins/types.js';
import { dataExtents, type Extents, firstEndingAfter, overlaps } from './extents.js';

class MemoryScratch implements ScratchArea {
	#next = 0n;
	readonly blocks = new Map<bigint, Buffer>();
	image: Image | undefined;
	get dev(): number {
		return this.image ? this.image.devices.length : -1;
	}
	async put(data: Buffer): Promise<bigint> {
		const at = this.#next;
		this.blocks.set(at, data);
		this.#next += BigInt(Math.ceil(data.length / 512));
		return at;
	}
	/** Bytes at (sector, +len) of what was put, if it is all in one put. */
	get(sector: bigint, len: number): Buffer | undefined {
		for (const [start, data] of this.blocks) {
			const off = Number(sector - start) * 512;
			if (off >= 0 && off + len <= data.length) return data.subarray(off, off + len);
		}
		return undefined;
	}
}

const READ_PIECE = 1024 * 1024;

/**
 * `n` buffers of `size` bytes each, page-aligned when the runtime lets us.
 *
 * Why: a large Buffer comes from malloc, which puts it 16 bytes past a page
 * boundary, and the kernel's copy between the page cache and a buffer at
 * that offset is 4-5x slower than to an aligned one (measured on this
 * project's AMD EPYC VM: 256 MiB read in 1 MiB preads, 160-190 ms at
 * page + 16, 30-50 ms aligned; dd, whose buffers are aligned, ~40 ms): the
 * source and destination addresses alias within a 4 KiB page. qemu-img
 * aligns its buffers too. WebAssembly memory is mapped, so page-aligned.
 */
export function pageAligned(size: number, n: number): Buffer[] {
	const pages = Math.ceil((size * n) / 65536);
	let ab: ArrayBuffer;
	try {
		// (The WebAssembly types are in the DOM lib, which this project leaves out.)
		const wasm = (globalThis as unknown as { WebAssembly: { Memory: new (d: { initial: number; maximum: number }) => { buffer: ArrayBuffer } } })
			.WebAssembly;
		ab = new wasm.Memory({ initial: pages, maximum: pages }).buffer;
	} catch {
		return Array.from({ length: n }, () => Buffer.allocUnsafe(size));
	}
	return Array.from({ length: n }, (_, i) => Buffer.from(ab, i * size, size));
}

/** [start, end) byte ranges of a chunk, sorted, disjoint, neighbours merged. */
export type Ranges = Array<[number, number]>;

export interface Chunk {
	data: Buffer;
	/**
	 * Where `data` holds bytes read from the image. Everything else reads as
	 * zeros but is NOT filled in (a quarter-full disk would cost a memset of
	 * the whole disk and a scan of it): see fillGaps().
	 */
	ranges: Ranges;
}

/** Add [s, e) to sorted `r`, merging with the last range when they touch. */
const addRange = (r: Ranges, s: number, e: number) => {
	const last = r[r.length - 1];
	if (last && last[1] >= s) last[1] = Math.max(last[1], e);
	else r.push([s, e]);
};

/** Zero the bytes of [from, to) that `ranges` does not cover. */
export function fillGaps(data: Buffer, ranges: Ranges, from: number, to: number): void {
	let cur = from;
	for (let i = firstEndingAfter(ranges, from); i < ranges.length && cur < to; i++) {
		const [s, e] = ranges[i]!;
		if (s >= to) break;
		if (s > cur) data.fill(0, cur, s);
		if (e > cur) cur = e;
	}
	if (cur < to) data.fill(0, cur, to);
}

/**
 * A raw file whose length is not a whole number of sectors: the raw plugin
 * leaves the partial last sector out, as a loop device does, so a copy
 * would lose its bytes. Copied, the disk ends at the next sector
 * boundary, zero-padded, as qemu-img's raw driver sees it.
 */
async function sizeWithTail(path: string, virtualSize: bigint): Promise<bigint> {
	const st = await stat(path, { bigint: true });
	if (!st.isFile() || st.size <= virtualSize || st.size - virtualSize >= 512n) return virtualSize;
	return (st.size + 511n) & ~511n;
}

export class SourceReader {
	#files: ImageFile[] = [];
	/** A linear image's data extents on device 0, when the file system tells. */
	#extents: Promise<Extents | undefined> | undefined;
	#size: bigint;
	private constructor(
		readonly image: Image,
		readonly format: string,
		readonly scratch: MemoryScratch,
	) {
		this.#size = image.virtualSize;
	}

	static async open(path: string, format: string | undefined, opts: OpenOptions = {}): Promise<SourceReader> {
		const plugin = await pluginFor(path, format);
		const scratch = new MemoryScratch();
		const roots = [...(opts.allowedRoots ?? []), dirname(resolve(path))];
		const image = await plugin.open(path, { ...opts, readOnly: true, scratch, allowedRoots: roots });
		scratch.image = image;
		const r = new SourceReader(image, plugin.name, scratch);
		try {
			for (const d of image.devices) r.#files.push(await ImageFile.open(d.path, false));
			// Asked now, awaited at the first read: the perl process runs
			// while the destination is created.
			if (image.capabilities.linear && image.devices[0]) {
				r.#extents = dataExtents(image.devices[0].path);
				r.#size = await sizeWithTail(image.devices[0].path, image.virtualSize);
			}
		} catch (e) {
			await r.close();
			throw e;
		}
		return r;
	}

	/** Bytes to copy: the image's size, but for a raw file's partial last sector (sizeWithTail). */
	get size(): bigint {
		return this.#size;
	}

	/**
	 * `want` bytes at `offset` (block-aligned), into `into` when given
	 * (reused by the caller between chunks: a fresh 4 MiB buffer per chunk
	 * made garbage collection a third of a conversion), else a new buffer.
	 * Holes, zero mappings and anything past the end are left out of
	 * `ranges` and not written into the buffer.
	 */
	async read(offset: bigint, want: number, into?: Buffer): Promise<Chunk> {
		const data = into && into.length >= want ? into.subarray(0, want) : Buffer.allocUnsafe(want);
		const ranges: Ranges = [];
		// Past the end (a backing file smaller than the disk) reads zeros.
		const left = this.size - offset;
		const len = left <= 0n ? 0 : left < BigInt(want) ? Number(left) : want;
		const bs = this.image.blockSize;
		const bbs = BigInt(bs);
		// A run of blocks contiguous on one device, read at once.
		let run: { dev: number; sector: bigint; at: number; len: number } | undefined;
		// Runs are read concurrently, in pieces of at most READ_PIECE, so the
		// thread pool keeps several reads in flight (as qemu-img does).
		const reads: Promise<unknown>[] = [];
		/** Start reading `n` bytes at byte `pos` of `f` into data[at...]. */
		const readRange = (f: ImageFile, at: number, pos: bigint, n: number) => {
			addRange(ranges, at, at + n);
			for (let p = 0; p < n; p += READ_PIECE) {
				const m = Math.min(READ_PIECE, n - p);
				// A file shorter than its mappings (a loop device's partial
				// last block) reads zeros past its end.
				const r = f.readInto(data, at + p, pos + BigInt(p), m).then((got) => {
					if (got < m) data.fill(0, at + p + got, at + p + m);
				});
				r.catch(() => undefined); // awaited below; never an unhandled rejection meanwhile
				reads.push(r);
			}
		};
		const flush = () => {
			if (!run) return;
			const f = this.#files[run.dev];
			if (!f) throw new DmuError('DMU_ERR_PLUGIN_BUG', `${this.format}: mapping names device ${run.dev}`);
			readRange(f, run.at, run.sector * 512n, run.len);
			run = undefined;
		};
		if (this.image.capabilities.linear && len > 0) {
			// Nothing to ask: the disk is device 0 as it is. Read only what
			// the file system says holds data; the holes stay zeros.
			const end = offset + BigInt(len);
			const extents = await this.#extents;
			const parts = extents ? overlaps(extents, offset, end) : [[offset, end] as const];
			for (const [from, to] of parts) readRange(this.#files[0]!, Number(from - offset), from, Number(to - from));
			await Promise.allSettled(reads);
			await Promise.all(reads);
			return { data, ranges };
		}
		try {
			for (let at = 0; at < len; ) {
				const pos = offset + BigInt(at);
				const inBlock = Number(pos % bbs);
				const n = Math.min(bs - inBlock, len - at);
				const d = await this.image.map({ block: pos / bbs, write: false, wholeBlock: false, roFault: false });
				if (d.kind === 'error') {
					throw new DmuError('DMU_ERR_IO', `${this.format}: cannot read block ${pos / bbs} (errno ${d.errno})`);
				}
				if (d.kind === 'map') {
					const sector = d.sector + BigInt(inBlock >> 9);
					if (d.dev === this.scratch.dev) {
						flush();
						const b = this.scratch.get(d.sector, bs);
						if (!b) throw new DmuError('DMU_ERR_PLUGIN_BUG', `${this.format}: scratch block not found`);
						b.copy(data, at, inBlock, inBlock + n);
						addRange(ranges, at, at + n);
					} else if (run && run.dev === d.dev && run.sector + BigInt(run.len / 512) === sector && inBlock % 512 === 0) {
						run.len += n;
					} else {
						flush();
						run = { dev: d.dev, sector, at, len: n };
					}
				} else {
					flush();
				}
				at += n;
			}
			flush();
		} finally {
			// Even on a failure: no read may still fill the buffer once the
			// caller reuses it.
			await Promise.allSettled(reads);
		}
		await Promise.all(reads);
		this.scratch.blocks.clear();
		return { data, ranges };
	}

	async close(): Promise<void> {
		for (const f of this.#files) await f.close().catch(() => undefined);
		await this.image.close();
	}
}
