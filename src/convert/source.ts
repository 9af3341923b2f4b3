/**
 * Reading a whole image fast, for conversion: ask the plugin where each
 * block lives, skip zero blocks without reading, and merge neighbouring
 * blocks that sit next to each other on one device into one read (a
 * 512-byte-cluster qcow would otherwise cost a read per sector).
 *
 * Data a plugin materialises (compressed clusters, partial blocks) goes
 * to an in-memory scratch area that lives only until the chunk is read.
 */
import { dirname, resolve } from 'node:path';
import { DmuError } from '../errors.js';
import { ImageFile } from '../plugins/raw/io.js';
import { pluginFor } from '../plugins/registry.js';
import type { Image, OpenOptions, ScratchArea } from '../plugins/types.js';

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

export interface Chunk {
	data: Buffer;
	/** Every block of the chunk was a zero (or unallocated) mapping. */
	allZero: boolean;
}

export class SourceReader {
	#files: ImageFile[] = [];
	private constructor(
		readonly image: Image,
		readonly format: string,
		readonly scratch: MemoryScratch,
	) {}

	static async open(path: string, format: string | undefined, opts: OpenOptions = {}): Promise<SourceReader> {
		const plugin = await pluginFor(path, format);
		const scratch = new MemoryScratch();
		const roots = [...(opts.allowedRoots ?? []), dirname(resolve(path))];
		const image = await plugin.open(path, { ...opts, readOnly: true, scratch, allowedRoots: roots });
		scratch.image = image;
		const r = new SourceReader(image, plugin.name, scratch);
		try {
			for (const d of image.devices) r.#files.push(await ImageFile.open(d.path, false));
		} catch (e) {
			await r.close();
			throw e;
		}
		return r;
	}

	get size(): bigint {
		return this.image.virtualSize;
	}

	/** `len` bytes at `offset` (block-aligned offset). */
	async read(offset: bigint, want: number): Promise<Chunk> {
		// Past the end (a backing file smaller than the disk) reads zeros.
		const left = this.size - offset;
		const len = left <= 0n ? 0 : left < BigInt(want) ? Number(left) : want;
		if (len < want) {
			const c = await this.read(offset, len);
			const data = Buffer.alloc(want);
			c.data.copy(data);
			return { data, allZero: c.allZero };
		}
		const bs = this.image.blockSize;
		const bbs = BigInt(bs);
		const data = Buffer.alloc(len);
		let allZero = true;
		// A run of blocks contiguous on one device, read at once.
		let run: { dev: number; sector: bigint; at: number; len: number } | undefined;
		const flush = async () => {
			if (!run) return;
			const f = this.#files[run.dev];
			if (!f) throw new DmuError('DMU_ERR_PLUGIN_BUG', `${this.format}: mapping names device ${run.dev}`);
			(await f.readPadded(run.sector * 512n, run.len)).copy(data, run.at);
			run = undefined;
		};
		if (len === 0) return { data, allZero };
		for (let at = 0; at < len; ) {
			const pos = offset + BigInt(at);
			const inBlock = Number(pos % bbs);
			const n = Math.min(bs - inBlock, len - at);
			const d = await this.image.map({ block: pos / bbs, write: false, wholeBlock: false, roFault: false });
			if (d.kind === 'error') {
				throw new DmuError('DMU_ERR_IO', `${this.format}: cannot read block ${pos / bbs} (errno ${d.errno})`);
			}
			if (d.kind === 'map') {
				allZero = false;
				const sector = d.sector + BigInt(inBlock >> 9);
				if (d.dev === this.scratch.dev) {
					await flush();
					const b = this.scratch.get(d.sector, bs);
					if (!b) throw new DmuError('DMU_ERR_PLUGIN_BUG', `${this.format}: scratch block not found`);
					b.copy(data, at, inBlock, inBlock + n);
				} else if (run && run.dev === d.dev && run.sector + BigInt(run.len / 512) === sector && inBlock % 512 === 0) {
					run.len += n;
				} else {
					await flush();
					run = { dev: d.dev, sector, at, len: n };
				}
			} else {
				await flush();
			}
			at += n;
		}
		await flush();
		this.scratch.blocks.clear();
		return { data, allZero };
	}

	async close(): Promise<void> {
		for (const f of this.#files) await f.close().catch(() => undefined);
		await this.image.close();
	}
}
