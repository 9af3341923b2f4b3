/**
 * An opened dscow image: answers map() from the bitmap and makes new bits
 * durable on commit().
 *
 * Devices: 0 = the image file (block N at firstBlock + N*blockSize),
 * 1 = the base (read-only, block N at N*blockSize) when there is one, and
 * the scratch device for the base's last block when the base does not end
 * on a block boundary (the kernel maps and copies whole blocks, and must
 * never read past the base's end).
 *
 * Crash safety: a new block's bit is only written by commit(), which the
 * kernel asks for after flushing the data devices, and only for blocks
 * whose data that flush covered (cowd's `covered` predicate, from the
 * kernel's numbered replies; see src/cowd/worker.ts). A crash before that
 * leaves the bit clear: the block reads from the base as if the write
 * never happened (allowed: it was never flushed). Such orphaned data is a leak
 * (dmu check exit 3), and because it may sit in a hole we would otherwise
 * trust to read zeros, an image opened after a crash zero-fills a new block
 * itself when no copy-first will overwrite it.
 *
 * Copy on write in the kernel (MapRequest.cow): an unwritten block over
 * the base is answered "read the base; a write allocates at your place in
 * the image" without touching the bitmap. The kernel copies and reports
 * the allocation (allocated()), which is then recorded and committed like
 * one of ours; the commit that covers it comes after the kernel's copy.
 */
import fs from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { dirname, resolve, sep } from 'node:path';
import { DmuError } from '../../errors.js';
import type { Capabilities, Image, ImageDevice, MapDecision, MapRequest, OpenOptions, ScratchArea } from '../types.js';
import { blockDeviceSize, zeroOut } from '../raw/io.js';
import { verify } from './base.js';
import { Bitmap } from './bitmap.js';
import { type Header, decodeHeader, dataEnd, encodeHeader, FLAG_CLEAN, HEADER_SIZE } from './layout.js';

const EIO = 5;
const EROFS = 30;
/** Device indexes (see the top of this file). */
const IMAGE_DEV = 0;
const BASE_DEV = 1;

const under = (path: string, dir: string) => path === dir || path.startsWith(dir.endsWith(sep) ? dir : dir + sep);

export interface Loaded {
	header: Header;
	bitmap: Bitmap;
	/** Bytes of the image: the file's size, or the whole block device. */
	fileSize: bigint;
	/** The image is a block device (an LVM volume, a partition): no holes, no growing. */
	blockDevice: boolean;
}

/** Read and validate header and bitmap (no writes). */
export async function load(fh: FileHandle, path: string): Promise<Loaded> {
	const st = await fh.stat({ bigint: true });
	const blockDevice = st.isBlockDevice();
	const fileSize = blockDevice ? await blockDeviceSize(st.rdev, path) : st.size;
	const buf = Buffer.alloc(HEADER_SIZE);
	await fh.read(buf, 0, HEADER_SIZE, 0);
	const header = decodeHeader(buf, fileSize, path);
	const raw = Buffer.alloc(Number(header.bitmapWords) * 4);
	const { bytesRead } = await fh.read(raw, 0, raw.length, Number(header.bitmapOffset));
	if (bytesRead !== raw.length) throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: bitmap is truncated`);
	if (blockDevice && fileSize < dataEnd(header)) {
		throw new DmuError(
			'DMU_ERR_BAD_IMAGE',
			`${path}: the device holds ${fileSize} bytes, the image's blocks need ${dataEnd(header)}: was the volume shrunk?`,
		);
	}
	return { header, bitmap: new Bitmap(header.blockCount, raw), fileSize, blockDevice };
}

/** Which base file to use: the command line's, else the header's if it lies in an allowed place. */
export function resolveBase(path: string, header: Header, opts: OpenOptions): string | undefined {
	if (opts.base) {
		if (!header.basePath) throw new DmuError('DMU_ERR_BASE', `${path}: this dscow image has no base, but base ${opts.base} was given`);
		return resolve(opts.base);
	}
	if (!header.basePath) return undefined;
	const roots = [dirname(resolve(path)), ...(opts.allowedRoots ?? []).map((r) => resolve(r))];
	if (!roots.some((r) => under(header.basePath, r))) {
		throw new DmuError(
			'DMU_ERR_BASE',
			`${path}: base ${header.basePath} named in the image is outside ${roots.join(', ')}; give the base explicitly or allow its directory`,
		);
	}
	return header.basePath;
}

/** Live-bitmap words one write may span (4 KiB: the whole map of a 1 GiB disk of 64 KiB blocks). */
const LIVE_SPAN_WORDS = 1024;

export class DscowImage implements Image {
	readonly format = 'dscow';
	readonly virtualSize: bigint;
	readonly blockSize: number;
	readonly devices: readonly ImageDevice[];
	readonly capabilities: Capabilities;
	/**
	 * Blocks allocated since the last commit started: their bits are not on
	 * disk yet. Plain numbers (a block index is far below 2^53): every first
	 * write passes through here, and BigInt keys hash slowly.
	 */
	#pending = new Set<number>();
	#commitChain: Promise<void> = Promise.resolve();
	#liveChain: Promise<void> = Promise.resolve();
	/** Live-bitmap words changed since the last live write started. */
	#liveDirty = new Set<number>();
	/** The live write that will carry #liveDirty, queued behind the running one. */
	#liveNext: Promise<void> | undefined;
	#lastPartial: { block: bigint; sector?: Promise<bigint> } | undefined;
	#closed = false;
	/** The bitmap words as the last commit left them on disk. */
	#onDisk: Uint32Array;
	/** Where block 0 lies in the image, and a block's length, in sectors (blocks are whole sectors). */
	readonly #firstSector: bigint;
	readonly #blockSectors: bigint;

	private constructor(
		readonly path: string,
		readonly header: Header,
		readonly bitmap: Bitmap,
		readonly basePath: string | undefined,
		readonly readOnly: boolean,
		/** Opened after a crash: holes may hold orphaned data. */
		readonly wasDirty: boolean,
		/** On a block device: an unallocated block holds whatever the device held. */
		readonly onDevice: boolean,
		private readonly fh: FileHandle,
		private readonly scratch: ScratchArea | undefined,
		onDisk: Uint32Array,
	) {
		this.#onDisk = onDisk;
		this.virtualSize = header.virtualSize;
		this.blockSize = header.blockSize;
		this.#firstSector = header.firstBlock / 512n;
		this.#blockSectors = BigInt(header.blockSize / 512);
		const devs: ImageDevice[] = [{ path, writable: !readOnly }];
		if (basePath) devs.push({ path: basePath, writable: false });
		this.devices = devs;
		const bs = BigInt(header.blockSize);
		const partial = basePath !== undefined && header.base.size % bs !== 0n;
		if (partial) this.#lastPartial = { block: header.base.size / bs };
		this.capabilities = { write: !readOnly, flush: !readOnly, scratch: partial, concurrentMap: true };
	}

	static async open(path: string, opts: OpenOptions = {}): Promise<DscowImage> {
		const abs = resolve(path);
		const readOnly = opts.readOnly ?? false;
		let fh: FileHandle;
		try {
			fh = await open(abs, readOnly ? 'r' : 'r+');
		} catch (e) {
			throw new DmuError('DMU_ERR_OPEN', `cannot open ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
		}
		try {
			const { header, bitmap, fileSize, blockDevice } = await load(fh, path);
			const onDisk = bitmap.words.slice();
			const stray = bitmap.strayBits();
			if (stray) throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: corrupt bitmap: bits set past the last block (run dmu check -r all)`);
			const basePath = resolveBase(path, header, opts);
			if (basePath) await verify(basePath, header.base, path);
			const wasDirty = (header.flags & FLAG_CLEAN) === 0;
			const pending: bigint[] = [];
			if (!readOnly) {
				// Everything was validated above; only now may we write.
				if (fileSize < dataEnd(header)) await fh.truncate(Number(dataEnd(header)));
				const len = Number(header.bitmapWords) * 4;
				if (opts.resume) {
					// The kernel still uses what the dead daemon allocated: keep it, commit it next.
					const live = Buffer.alloc(len);
					await fh.read(live, 0, len, Number(header.liveOffset));
					const liveMap = new Bitmap(header.blockCount, live);
					for (let w = 0; w < bitmap.words.length; w++) {
						const extra = (liveMap.words[w]! & ~bitmap.words[w]!) >>> 0;
						for (let b = 0; b < 32; b++) if (extra & (1 << b)) pending.push(BigInt(w * 32 + b));
					}
					for (const b of pending) if (b < header.blockCount) bitmap.set(b);
				} else {
					// Allocations never committed died with the old daemon and the disk.
					await fh.write(bitmap.encode(0, bitmap.words.length), 0, len, Number(header.liveOffset));
				}
				await fh.write(encodeHeader({ ...header, flags: header.flags & ~FLAG_CLEAN }), 0, HEADER_SIZE, 0);
				await fh.datasync();
			}
			opts.log?.debug({ image: path, base: basePath, wasDirty, resumed: pending.length }, 'dscow image opened');
			const img = new DscowImage(abs, header, bitmap, basePath, readOnly, wasDirty, blockDevice, fh, opts.scratch, onDisk);
			for (const b of pending) img.#pending.add(Number(b));
			return img;
		} catch (e) {
			await fh.close();
			throw e;
		}
	}

	#imageSector(block: bigint): bigint {
		return this.#firstSector + block * this.#blockSectors;
	}

	/** The base's last, partial block, zero-padded, stored once on the scratch device. */
	#partialSector(): Promise<bigint> {
		const lp = this.#lastPartial!;
		if (!this.scratch) throw new DmuError('DMU_ERR_SCRATCH', `${this.path}: the base's last block is partial and no scratch device was given`);
		lp.sector ??= (async () => {
			const bs = BigInt(this.blockSize);
			const len = Number(this.header.base.size - lp.block * bs);
			const buf = Buffer.alloc(this.blockSize);
			const base = await open(this.basePath!, 'r');
			try {
				await base.read(buf, 0, len, Number(lp.block * bs));
			} finally {
				await base.close();
			}
			return this.scratch!.put(buf);
		})();
		return lp.sector;
	}

	/** Where an unallocated block's old contents come from, or undefined for zeros. */
	async #source(block: bigint): Promise<{ dev: number; sector: bigint } | undefined> {
		if (!this.basePath) return undefined;
		if (this.#lastPartial?.block === block) return { dev: this.scratch!.dev, sector: await this.#partialSector() };
		if (block * BigInt(this.blockSize) >= this.header.base.size) return undefined; // past the base: zeros
		return { dev: 1, sector: (block * BigInt(this.blockSize)) / 512n };
	}

	/**
	 * How many blocks from `block` on (at most `max`, and before `end`)
	 * `same` holds for: the run one answer may cover. Blocks being
	 * allocated right now have their bit set already or are waiting in the
	 * kernel, which keeps their own answer (see MapDecision.run).
	 */
	#run(block: bigint, max: number | undefined, end: bigint, same: (b: number) => boolean): number {
		const first = Number(block);
		const stop = Math.min(first + (max ?? 1), Number(end));
		let b = first + 1;
		while (b < stop && same(b)) b++;
		return b - first;
	}

	async map(req: MapRequest): Promise<MapDecision> {
		const { block } = req;
		const count = this.header.blockCount;
		if (block < 0n || block >= count) return { kind: 'error', errno: EIO };
		if (this.bitmap.get(block)) {
			const durable = !this.#pending.has(Number(block));
			// Committed neighbours are contiguous in the file: one answer for all.
			const run = durable ? this.#run(block, req.maxRun, count, (b) => this.bitmap.has(b) && (this.#pending.size === 0 || !this.#pending.has(b))) : 1;
			return { kind: 'map', dev: 0, sector: this.#imageSector(block), writable: !this.readOnly, durable, run };
		}
		const src = await this.#source(block);
		if (req.cow && !this.readOnly && src?.dev === BASE_DEV) return this.#cowAnswer(block, src.sector, req.maxRun);
		if (!req.write) {
			// Unwritten neighbours read the base (up to its last whole block) or zeros after it.
			if (!src) return { kind: 'zero', run: this.#unwritten(block, req.maxRun, count) };
			const run = src.dev === BASE_DEV ? this.#unwritten(block, req.maxRun, this.#baseWholeBlocks()) : 1;
			return { kind: 'map', dev: src.dev, sector: src.sector, writable: false, durable: true, run };
		}
		if (this.readOnly) return { kind: 'error', errno: EROFS };
		if (!src && !req.wholeBlock && (this.wasDirty || this.onDevice)) await this.#zeroBlock(block);
		this.bitmap.set(block);
		this.#pending.add(Number(block));
		await this.#recordLive(block);
		const d: MapDecision = { kind: 'map', dev: 0, sector: this.#imageSector(block), writable: true, durable: false };
		if (src && !req.wholeBlock) d.copyFrom = src;
		return d;
	}

	/** Blocks from `block` on (at most `maxRun`, before `end`) with their bit clear. */
	#unwritten(block: bigint, maxRun: number | undefined, end: bigint): number {
		const first = Number(block);
		return 1 + this.bitmap.clearUpTo(first + 1, Math.min(first + (maxRun ?? 1), Number(end)));
	}

	/** Blocks the base holds whole (its partial last block, if any, is not one of them). */
	#baseWholeBlocks(): bigint {
		return this.header.base.size / BigInt(this.blockSize);
	}

	/**
	 * An unwritten block over the base, for reads and writes alike: read the
	 * base until the first write, which the kernel turns into the block's
	 * allocation at its fixed place in the image (allocated() records it).
	 * Nothing is allocated here, so the bit stays clear; the run covers the
	 * unwritten neighbours, each allocated at its own place (one block
	 * further in the image as in the base). The partial last base block
	 * (scratch) and blocks past the base (zeros) keep the copy-first path:
	 * the kernel would copy from a place they do not have.
	 */
	#cowAnswer(block: bigint, baseSector: bigint, maxRun: number | undefined): MapDecision {
		const run = this.#unwritten(block, maxRun, this.#baseWholeBlocks());
		const cow = { dev: IMAGE_DEV, sector: this.#imageSector(block) };
		return { kind: 'map', dev: BASE_DEV, sector: baseSector, writable: false, durable: true, cow, run };
	}

	/**
	 * The kernel allocated `count` blocks from `block` on, on first
	 * writes to cow answers. Recorded like map()'s allocations: the bits now, the
	 * live bitmap before resolving (a new daemon resuming still knows
	 * them), the committed bitmap by the commit that covers them. A
	 * re-sent report of blocks already recorded changes nothing.
	 */
	allocated(block: bigint, dev: number, sector: bigint, count: number): Promise<void> {
		// Not async, and the range is walked in plain numbers: a sequential
		// first write reports every block, and under emulation BigInt and
		// promise work per block was what cowd spent its CPU on.
		if (this.readOnly) {
			return Promise.reject(new DmuError('DMU_ERR_READ_ONLY', `${this.path}: the kernel allocated block ${block} in a read-only image`));
		}
		if (
			!Number.isSafeInteger(count) ||
			count < 1 ||
			block < 0n ||
			block + BigInt(count) > this.header.blockCount ||
			dev !== IMAGE_DEV ||
			sector !== this.#imageSector(block)
		) {
			return Promise.reject(
				new DmuError(
					'DMU_ERR_COW',
					`${this.path}: the kernel allocated ${count} block(s) from ${block} at device ${dev} sector ${sector}, not where dscow keeps them`,
				),
			);
		}
		// Blocks lie at fixed places one block apart, so the first one's
		// place checked above is every one's.
		const first = Number(block);
		let added = false;
		for (let b = first; b < first + count; b++) {
			if (this.bitmap.has(b)) continue; // recorded already (a re-sent report)
			this.bitmap.setNumber(b);
			this.#pending.add(b);
			this.#liveDirty.add(b >>> 5);
			added = true;
		}
		// Nothing new: resolve once the live writes under way are done.
		return added ? this.#recordLive(block) : this.#liveChain;
	}

	/**
	 * A block about to be partly written with nothing to copy under it must
	 * read zeros around the write. A file's hole does, except after a crash
	 * (it may hold orphaned data); a device's block never is a hole.
	 */
	async #zeroBlock(block: bigint): Promise<void> {
		const offset = this.#imageSector(block) * 512n;
		if (this.onDevice) return zeroOut(this.path, offset, BigInt(this.blockSize), { inUse: true });
		await this.fh.write(Buffer.alloc(this.blockSize), 0, this.blockSize, Number(offset));
		// On disk before the kernel's (possibly direct) I/O to the block starts.
		await this.fh.datasync();
	}

	async copyFailed(block: bigint): Promise<void> {
		if (this.readOnly || !this.#pending.has(Number(block))) return; // only blocks allocated since the last commit
		this.bitmap.clear(block);
		this.#pending.delete(Number(block));
		await this.#recordLive(block);
	}

	/**
	 * Get the block's word into the live bitmap (no fsync: it only has to
	 * survive the daemon, not the host). One write at a time; every word
	 * changed while one runs goes out together in the next, encoded when it
	 * starts, so a batch of first touches costs one or two writes, not one
	 * each, and the last write always carries every bit.
	 */
	#recordLive(block: bigint): Promise<void> {
		this.#liveDirty.add(Number(block) >>> 5);
		if (!this.#liveNext) {
			const next = this.#liveChain.then(() => {
				this.#liveNext = undefined;
				return this.#writeLive();
			});
			this.#liveNext = next;
			this.#liveChain = next.catch(() => undefined);
		}
		return this.#liveNext;
	}

	async #writeLive(): Promise<void> {
		const words = [...this.#liveDirty].sort((a, b) => a - b);
		this.#liveDirty.clear();
		if (words.length === 0) return;
		const first = words[0]!;
		const count = words[words.length - 1]! - first + 1;
		// Every live word is the word in memory (each change of a bit is
		// followed by its word's live write), so the words between changed
		// ones can go out again as they are: within a few KiB, one write of
		// the whole span beats one pwrite per scattered word. First writes
		// at random report their blocks one by one, and under emulation
		// those thread-pool round trips were most of what cowd spent on them.
		if (count <= LIVE_SPAN_WORDS) {
			// On this thread: a few KiB into a page the page cache holds (the
			// live bitmap was read at open) is a memcpy, not worth two thread
			// hand-offs per batch.
			fs.writeSync(this.fh.fd, this.bitmap.encode(first, count), 0, count * 4, Number(this.header.liveOffset) + first * 4);
			return;
		}
		await this.#writeWords(this.header.liveOffset, words, (w) => this.bitmap.words[w]!);
	}

	/**
	 * Write bitmap words (sorted indexes) into the bitmap region at `offset`,
	 * one pwrite per run of neighbours. Every run is encoded before the
	 * first write, so what goes out is the words as they were at the call.
	 */
	async #writeWords(offset: bigint, words: readonly number[], value: (w: number) => number): Promise<void> {
		const writes = Bitmap.runs(words).map(([first, count]) => {
			const buf = Buffer.alloc(count * 4);
			for (let i = 0; i < count; i++) buf.writeUInt32LE(value(first + i), i * 4);
			return { first, buf };
		});
		for (const { first, buf } of writes) {
			await this.fh.write(buf, 0, buf.length, Number(offset) + first * 4);
		}
	}

	commit(covered?: (block: bigint) => boolean): Promise<void> {
		// Commits run one after another; each picks its blocks when it starts.
		const run = this.#commitChain.then(() => this.#commit(covered));
		this.#commitChain = run.catch(() => undefined);
		return run;
	}

	/**
	 * Write the bits of the pending blocks `covered` accepts (all without
	 * it) on top of what is on disk. Blocks allocated meanwhile, or not
	 * covered by the kernel's flush, keep their bit out of the on-disk
	 * bitmap: their data may not be on disk yet.
	 */
	async #commit(covered?: (block: bigint) => boolean): Promise<void> {
		if (this.readOnly) return;
		const blocks = [...this.#pending].filter((b) => this.bitmap.has(b) && (covered?.(BigInt(b)) ?? true));
		const next = new Map<number, number>();
		for (const b of blocks) {
			const w = b >>> 5;
			next.set(w, ((next.get(w) ?? this.#onDisk[w]!) | (1 << (b & 31))) >>> 0);
		}
		const words = [...next.keys()].sort((a, b) => a - b);
		try {
			await this.#writeWords(this.header.bitmapOffset, words, (w) => next.get(w)!);
			await this.fh.datasync();
		} catch (e) {
			throw new DmuError('DMU_ERR_IO', `${this.path}: commit failed: ${(e as Error).message}`);
		}
		for (const [w, v] of next) this.#onDisk[w] = v;
		for (const b of blocks) this.#pending.delete(b);
	}

	async close(): Promise<void> {
		if (this.#closed) return;
		this.#closed = true;
		try {
			if (!this.readOnly) {
				await this.commit();
				await this.fh.write(encodeHeader({ ...this.header, flags: this.header.flags | FLAG_CLEAN }), 0, HEADER_SIZE, 0);
				await this.fh.datasync();
			}
		} finally {
			await this.fh.close();
		}
	}
}
