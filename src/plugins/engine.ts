/**
 * BlockEngine: byte-level reads and writes through a plugin's Image, with
 * the kernel target's semantics reproduced in userspace: a mapping is asked
 * for once and remembered (unless temporary), writes to read-only or zero
 * mappings fault back to the plugin, copy-first copies the whole source
 * block before the write lands.
 *
 * `dmu convert` reads and writes images through it, and the host tests use
 * it to prove a plugin's decisions give the right bytes without a kernel.
 * It is not the data path of an attached disk: there the kernel does this.
 */
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DmuError } from '../errors.js';
import type { Image, MapDecision, OpenOptions, Plugin, ScratchArea } from './types.js';

type Remembered = Extract<MapDecision, { kind: 'map' | 'zero' }>;

export interface EngineStats {
	requests: number;
	copies: number;
	faults: number;
}

/**
 * A sparse temp file standing in for cowd's scratch device, created on first
 * use: most images never need one.
 */
class ScratchFile implements ScratchArea {
	#next = 0n;
	#file: { fh: FileHandle; dir: string } | undefined;
	image: Image | undefined;

	get dev(): number {
		return this.image ? this.image.devices.length : -1;
	}

	get handle(): FileHandle | undefined {
		return this.#file?.fh;
	}

	async put(data: Buffer): Promise<bigint> {
		if (!this.#file) {
			const dir = await mkdtemp(join(tmpdir(), 'dmu-scratch-'));
			this.#file = { fh: await open(join(dir, 'scratch'), 'w+'), dir };
		}
		const sector = this.#next;
		this.#next += BigInt(Math.ceil(data.length / 512));
		await this.#file.fh.write(data, 0, data.length, Number(sector * 512n));
		return sector;
	}

	async dispose(): Promise<void> {
		if (!this.#file) return;
		await this.#file.fh.close();
		await rm(this.#file.dir, { recursive: true, force: true });
	}
}

/** Where part of a write lands: data[from, from + len) goes at byte `pos` of `file`. */
export interface PlacedRun {
	file: FileHandle;
	pos: number;
	from: number;
	len: number;
}

export class BlockEngine {
	readonly stats: EngineStats = { requests: 0, copies: 0, faults: 0 };
	#mappings = new Map<bigint, Remembered>();
	#bs: number;

	private constructor(
		readonly image: Image,
		readonly files: readonly FileHandle[],
		readonly scratch: ScratchFile,
	) {
		this.#bs = image.blockSize;
	}

	/** Open `path` with `plugin` and the files its devices name. */
	static async open(plugin: Plugin, path: string, opts: OpenOptions = {}): Promise<BlockEngine> {
		// The scratch device's index is only known once the image says how
		// many devices it has, so the image is attached to it after open().
		const scratch = new ScratchFile();
		const image = await plugin.open(path, { ...opts, scratch: opts.scratch ?? scratch });
		scratch.image = image;
		const files: FileHandle[] = [];
		try {
			for (const d of image.devices) files.push(await open(d.path, d.writable && !opts.readOnly ? 'r+' : 'r'));
		} catch (e) {
			await Promise.all(files.map((f) => f.close()));
			await image.close();
			throw e;
		}
		return new BlockEngine(image, files, scratch);
	}

	#file(dev: number): FileHandle {
		const f = dev === this.files.length ? this.scratch.handle : this.files[dev];
		if (!f) throw new DmuError('DMU_ERR_PLUGIN_BUG', `${this.image.format}: mapping names device ${dev}, image has ${this.files.length}`);
		return f;
	}

	async #decide(block: bigint, write: boolean, wholeBlock: boolean): Promise<Remembered> {
		const known = this.#mappings.get(block);
		const usable = known && (!write || (known.kind === 'map' && known.writable));
		if (known && usable) return known;
		if (known) this.stats.faults++;
		this.stats.requests++;
		const d = await this.image.map({ block, write, wholeBlock, roFault: known !== undefined });
		if (d.kind === 'error') {
			throw new DmuError('DMU_ERR_IO', `${this.image.format}: block ${block}: I/O error (errno ${d.errno})`);
		}
		if (write && !(d.kind === 'map' && d.writable)) {
			throw new DmuError('DMU_ERR_PLUGIN_BUG', `${this.image.format}: write to block ${block} got a read-only answer`);
		}
		if (d.kind === 'map' && d.copyFrom) {
			const buf = Buffer.alloc(this.#bs);
			await this.#readFull(this.#file(d.copyFrom.dev), buf, d.copyFrom.sector * 512n);
			await this.#file(d.dev).write(buf, 0, buf.length, Number(d.sector * 512n));
			this.stats.copies++;
		}
		const remembered: Remembered = d.kind === 'map' ? { ...d, copyFrom: undefined } : d;
		if (!d.temporary) this.#mappings.set(block, remembered);
		else this.#mappings.delete(block);
		return remembered;
	}

	async #readFull(fh: FileHandle, buf: Buffer, offset: bigint): Promise<void> {
		// Reads past a file's end are zeros, as a loop device's would be for a
		// partially filled last block.
		let done = 0;
		while (done < buf.length) {
			const { bytesRead } = await fh.read(buf, done, buf.length - done, Number(offset) + done);
			if (bytesRead === 0) {
				buf.fill(0, done);
				return;
			}
			done += bytesRead;
		}
	}

	#check(offset: bigint, length: number): void {
		if (offset < 0n || offset + BigInt(length) > this.image.virtualSize) {
			throw new DmuError('DMU_ERR_RANGE', `I/O at ${offset}+${length} is outside the ${this.image.virtualSize}-byte disk`);
		}
	}

	/** Read `length` bytes at byte `offset` of the virtual disk. */
	async read(offset: bigint | number, length: number): Promise<Buffer> {
		const off = BigInt(offset);
		this.#check(off, length);
		const out = Buffer.alloc(length);
		const bs = BigInt(this.#bs);
		let done = 0;
		while (done < length) {
			const pos = off + BigInt(done);
			const block = pos / bs;
			const inBlock = Number(pos % bs);
			const n = Math.min(this.#bs - inBlock, length - done);
			const d = await this.#decide(block, false, false);
			if (d.kind === 'map') {
				await this.#readFull(this.#file(d.dev), out.subarray(done, done + n), d.sector * 512n + BigInt(inBlock));
			} // zero: out is already zero-filled
			done += n;
		}
		return out;
	}

	/**
	 * Write `data` at byte `offset` of the virtual disk. Blocks that the
	 * plugin places next to each other on one device go out as one write
	 * (a conversion to qcow2 allocates clusters in order).
	 */
	async write(offset: bigint | number, data: Buffer): Promise<void> {
		for (const r of await this.place(offset, data.length)) {
			for (let w = 0; w < r.len; ) {
				const { bytesWritten } = await r.file.write(data, r.from + w, r.len - w, r.pos + w);
				w += bytesWritten;
			}
		}
	}

	/**
	 * Map a write of `length` bytes at byte `offset` (allocating, and
	 * copying first where the plugin asks) without writing it: where the
	 * bytes go, as runs of blocks placed next to each other on one device.
	 * The caller writes data[from, from + len) at `pos` of `file`, before
	 * the next flush(). `dmu convert` maps a chunk, then writes it while it
	 * reads the next one.
	 */
	async place(offset: bigint | number, length: number): Promise<PlacedRun[]> {
		const off = BigInt(offset);
		this.#check(off, length);
		const bs = BigInt(this.#bs);
		const runs: PlacedRun[] = [];
		let run: (PlacedRun & { dev: number }) | undefined;
		let done = 0;
		while (done < length) {
			const pos = off + BigInt(done);
			const block = pos / bs;
			const inBlock = Number(pos % bs);
			const n = Math.min(this.#bs - inBlock, length - done);
			const d = await this.#decide(block, true, inBlock === 0 && n === this.#bs);
			if (d.kind !== 'map') throw new DmuError('DMU_ERR_PLUGIN_BUG', 'write mapped to zero');
			const at = Number(d.sector * 512n) + inBlock;
			if (run && run.dev === d.dev && run.pos + run.len === at) {
				run.len += n;
			} else {
				run = { dev: d.dev, file: this.#file(d.dev), pos: at, from: done, len: n };
				runs.push(run);
			}
			done += n;
		}
		return runs.map(({ file, pos, from, len }) => ({ file, pos, from, len }));
	}

	/** Flush data files, then let the plugin commit its metadata. */
	async flush(): Promise<void> {
		await Promise.all(this.files.map((f) => f.datasync().catch(() => undefined)));
		await this.image.commit();
	}

	/** Forget remembered mappings (what DMU_MSG_INVALIDATE does in the kernel). */
	invalidate(): void {
		this.#mappings.clear();
	}

	async close(): Promise<void> {
		await this.flush();
		await this.image.close();
		await Promise.all(this.files.map((f) => f.close()));
		await this.scratch.dispose();
	}
}
