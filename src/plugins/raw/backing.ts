/**
 * Backing (parent) files for the formats that have them (qcow, vhd
 * differencing, vmdk with a parent, and anyone else who wants it).
 *
 * A backing image is opened with its own plugin; its devices are appended
 * after the top image's, so the top shifts the backing's device indexes.
 * Block sizes may differ: a top block inside one backing block maps into
 * it directly; a top block spanning several backing blocks maps directly
 * only if they are contiguous on one device, otherwise it is read through
 * the chain into the scratch device (temporary, read-only).
 *
 * Safety: a name read from an image header was written by whoever wrote
 * the image (maybe a guest). It is only opened if it resolves, symlinks
 * followed, under the image's own directory or an allowed root; a chain
 * that comes back to a file already in it is refused.
 */
import { realpath, stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve, sep } from 'node:path';
import { DmuError } from '../../errors.js';
import { pluginFor } from '../registry.js';
import type { Image, MapDecision, OpenOptions, ScratchArea } from '../types.js';
import { ImageFile } from './io.js';

/** Real paths of the images above, carried through OpenOptions. */
const CHAIN = Symbol.for('dmu.backingChain');
const MAX_DEPTH = 16;
type ChainOpts = OpenOptions & { [CHAIN]?: readonly string[] };

/** Where a top block's data is in the backing chain. */
export type Located =
	| { kind: 'zero' }
	| { kind: 'error'; errno: number }
	| { kind: 'map'; dev: number; sector: bigint; temporary: boolean };

const within = (p: string, root: string) => p === root || p.startsWith(root.endsWith(sep) ? root : root + sep);

/**
 * Resolve `name` (from the header of `imagePath`) to a real path, refusing
 * anything outside the image's directory and the allowed roots.
 */
export async function resolveBackingPath(imagePath: string, name: string, opts: OpenOptions): Promise<string> {
	const dir = dirname(imagePath);
	const wanted = isAbsolute(name) ? name : resolve(dir, name);
	let real: string;
	try {
		real = await realpath(wanted);
	} catch (e) {
		throw new DmuError('DMU_ERR_BACKING', `${imagePath}: backing file ${name} cannot be opened: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
	}
	const st = await stat(real);
	if (!st.isFile() && !st.isBlockDevice()) {
		throw new DmuError('DMU_ERR_BACKING', `${imagePath}: backing file ${name} is not a regular file or block device`);
	}
	const roots = [dir, ...(opts.allowedRoots ?? [])];
	for (const r of roots) {
		const rr = await realpath(r).catch(() => undefined);
		if (rr && within(real, rr)) return real;
	}
	throw new DmuError(
		'DMU_ERR_BACKING_PATH',
		`${imagePath}: backing file ${name} is outside ${dir} and the allowed roots; refusing to open it (allow its directory explicitly)`,
	);
}

/** The path a header's name refers to, without opening anything (for info). */
export const backingDisplayPath = (imagePath: string, name: string): string =>
	isAbsolute(name) ? name : resolve(dirname(imagePath), name);

export class Backing {
	/** Scratch buffers the backing stored, so bytes can be read back. */
	#captured = new Map<bigint, Buffer>();
	#files = new Map<number, ImageFile>();

	private constructor(
		readonly image: Image,
		/** Index of the backing's device 0 in the top image's list. */
		readonly devOffset: number,
		readonly scratch: ScratchArea | undefined,
	) {}

	/**
	 * Open the backing file named `name` in `imagePath`'s header (or the
	 * command line's base, which overrides it), read-only.
	 */
	static async open(
		imagePath: string,
		name: string,
		format: string | undefined,
		opts: OpenOptions,
		devOffset: number,
	): Promise<Backing> {
		const chainOpts = opts as ChainOpts;
		const me = await realpath(imagePath).catch(() => resolve(imagePath));
		const chain = [...(chainOpts[CHAIN] ?? []), me];
		let path: string;
		let fmt = format;
		if (opts.base) {
			path = resolve(opts.base);
			fmt = opts.baseFormat ?? fmt;
		} else {
			path = await resolveBackingPath(imagePath, name, opts);
		}
		const real = await realpath(path).catch(() => path);
		if (chain.includes(real)) {
			throw new DmuError('DMU_ERR_BACKING_LOOP', `${imagePath}: backing chain loops back to ${real}`);
		}
		if (chain.length > MAX_DEPTH) {
			throw new DmuError('DMU_ERR_BACKING_LOOP', `${imagePath}: backing chain deeper than ${MAX_DEPTH} images`);
		}
		const plugin = await pluginFor(path, fmt);
		let self: Backing | undefined;
		const top = opts.scratch;
		// The backing's scratch is the top's, with what it stores remembered
		// so a block spanning several backing blocks can be assembled.
		const scratch: ScratchArea | undefined = top && {
			get dev() {
				return top.dev;
			},
			async put(data: Buffer) {
				const s = await top.put(data);
				self?.remember(s, data);
				return s;
			},
		};
		const childOpts: ChainOpts = {
			allowedRoots: opts.allowedRoots,
			force: opts.force,
			log: opts.log,
			readOnly: true,
			scratch,
			[CHAIN]: chain,
		};
		const image = await plugin.open(path, childOpts);
		self = new Backing(image, devOffset, scratch);
		return self;
	}

	remember(sector: bigint, data: Buffer): void {
		this.#captured.set(sector, data);
		// Only read back right after the map that stored it: a few suffice.
		if (this.#captured.size > 8) {
			const first = this.#captured.keys().next().value as bigint;
			this.#captured.delete(first);
		}
	}

	get devices() {
		return this.image.devices.map((d) => ({ path: d.path, writable: false }));
	}

	get size(): bigint {
		return this.image.virtualSize;
	}

	#isScratch(dev: number): boolean {
		return this.scratch !== undefined && dev === this.scratch.dev;
	}

	#shift(dev: number): number {
		return this.#isScratch(dev) ? dev : dev + this.devOffset;
	}

	async #childMap(block: bigint): Promise<MapDecision> {
		return this.image.map({ block, write: false, wholeBlock: false, roFault: false });
	}

	/** Where the `len` bytes (one top block) at byte `offset` live. */
	async locate(offset: bigint, len: number): Promise<Located> {
		const size = this.image.virtualSize;
		if (offset >= size) return { kind: 'zero' };
		const cbs = BigInt(this.image.blockSize);
		const end = offset + BigInt(len);
		if (end <= size && cbs >= BigInt(len)) {
			const d = await this.#childMap(offset / cbs);
			if (d.kind !== 'map') return d.kind === 'zero' ? { kind: 'zero' } : d;
			return {
				kind: 'map',
				dev: this.#shift(d.dev),
				sector: d.sector + (offset % cbs) / 512n,
				temporary: d.temporary === true || this.#isScratch(d.dev),
			};
		}
		if (end <= size) {
			// Several backing blocks: direct only if all zero or contiguous.
			let allZero = true;
			let first: { dev: number; sector: bigint } | undefined;
			let contiguous = true;
			for (let b = offset / cbs, i = 0n; b * cbs < end; b++, i++) {
				const d = await this.#childMap(b);
				if (d.kind === 'error') return d;
				if (d.kind === 'zero') {
					contiguous = false;
					continue;
				}
				allZero = false;
				if (d.temporary || this.#isScratch(d.dev)) contiguous = false;
				if (!first) first = { dev: d.dev, sector: d.sector - (i * cbs) / 512n };
				else if (d.dev !== first.dev || d.sector !== first.sector + (i * cbs) / 512n) contiguous = false;
			}
			if (allZero) return { kind: 'zero' };
			if (contiguous && first) return { kind: 'map', dev: this.#shift(first.dev), sector: first.sector, temporary: false };
		}
		if (!this.scratch) return { kind: 'error', errno: 5 };
		const buf = await this.read(offset, len);
		const sector = await this.scratch.put(buf);
		return { kind: 'map', dev: this.scratch.dev, sector, temporary: true };
	}

	async #file(dev: number): Promise<ImageFile> {
		let f = this.#files.get(dev);
		if (!f) {
			const d = this.image.devices[dev];
			if (!d) throw new DmuError('DMU_ERR_PLUGIN_BUG', `${this.image.format}: mapping names device ${dev}`);
			f = await ImageFile.open(d.path, false);
			this.#files.set(dev, f);
		}
		return f;
	}

	#fromCapture(sector: bigint, len: number): Buffer | undefined {
		for (const [start, data] of this.#captured) {
			const off = Number(sector - start) * 512;
			if (off >= 0 && off + len <= data.length) return data.subarray(off, off + len);
		}
		return undefined;
	}

	/** `len` bytes at `offset` of the backing disk (zeros past its end). */
	async read(offset: bigint, len: number): Promise<Buffer> {
		const out = Buffer.alloc(len);
		const size = this.image.virtualSize;
		const cbs = BigInt(this.image.blockSize);
		let done = 0;
		while (done < len) {
			const pos = offset + BigInt(done);
			if (pos >= size) break;
			const inBlock = pos % cbs;
			const n = Math.min(Number(cbs - inBlock), len - done, Number(size - pos));
			const d = await this.#childMap(pos / cbs);
			if (d.kind === 'error') throw new DmuError('DMU_ERR_IO', `${this.image.format}: backing read error (errno ${d.errno})`);
			if (d.kind === 'map') {
				const at = d.sector + inBlock / 512n;
				if (this.#isScratch(d.dev)) {
					const data = this.#fromCapture(d.sector, Number(cbs));
					if (!data) throw new DmuError('DMU_ERR_PLUGIN_BUG', `${this.image.format}: scratch data not captured`);
					data.copy(out, done, Number(inBlock), Number(inBlock) + n);
				} else {
					const f = await this.#file(d.dev);
					(await f.readPadded(at * 512n + (inBlock % 512n), n)).copy(out, done);
				}
			}
			done += n;
		}
		return out;
	}

	async close(): Promise<void> {
		for (const f of this.#files.values()) await f.close();
		this.#files.clear();
		await this.image.close();
	}
}
