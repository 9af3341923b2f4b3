/**
 * An opened VHD: fixed disks map in place; dynamic and differencing disks
 * through the BAT (one 32-bit sector offset per block), each block being a
 * sector bitmap followed by the data. For differencing disks the bitmap
 * says which sectors are here (1) and which come from the parent (0); a
 * dynamic disk's bitmap is ignored, as qemu and Hyper-V write it all ones.
 *
 * Allocation: a new block goes where the trailing footer is (the file's
 * end): its bitmap overwrites the old footer, the footer is written again
 * after the new block, the BAT entry is updated. commit() syncs the file.
 */
import { DmuError } from '../../errors.js';
import type { Backing } from '../raw/backing.js';
import { alignUp, PAGE } from '../page.js';
import type { ImageFile } from '../raw/io.js';
import type { Capabilities, Image, ImageDevice, MapDecision, MapRequest, ScratchArea } from '../types.js';
import { BAT_UNUSED, DISK_DIFF, DISK_FIXED, type DynHeader, type Footer, serializeFooter } from './layout.js';

export interface VhdParts {
	path: string;
	file: ImageFile;
	footer: Footer;
	header?: DynHeader;
	bat?: Uint32Array;
	virtualSize: bigint;
	blockSize: number;
	/** Where the next block goes (the trailing footer's offset). */
	nextFree: bigint;
	writable: boolean;
	backing?: Backing;
	scratch?: ScratchArea;
}

const EIO = 5;

export class VhdImage implements Image {
	readonly format = 'vhd';
	readonly virtualSize: bigint;
	readonly blockSize: number;
	readonly devices: ImageDevice[];
	readonly capabilities: Capabilities;
	readonly footer: Footer;
	#p: VhdParts;
	#spb: bigint;
	/** Bytes of a block's sector bitmap (whole sectors). */
	#bitmapBytes: number;
	/** Bitmaps read so far, for differencing disks. */
	#bitmaps = new Map<number, Buffer>();
	#dirty = false;
	#closed = false;

	constructor(p: VhdParts) {
		this.#p = p;
		this.footer = p.footer;
		this.virtualSize = p.virtualSize;
		this.blockSize = p.blockSize;
		this.#spb = BigInt(p.blockSize / 512);
		this.#bitmapBytes = Math.ceil(p.blockSize / 512 / 8 / 512) * 512;
		this.devices = [{ path: p.path, writable: p.writable }, ...(p.backing?.devices ?? [])];
		const diff = p.footer.diskType === DISK_DIFF;
		this.capabilities = { write: p.writable, flush: p.writable && p.footer.diskType !== DISK_FIXED, scratch: diff };
	}

	get diskType(): number {
		return this.footer.diskType;
	}

	get bat(): Uint32Array | undefined {
		return this.#p.bat;
	}

	async map(req: MapRequest): Promise<MapDecision> {
		const { block } = req;
		const bs = BigInt(this.blockSize);
		if (block < 0n || block * bs >= this.virtualSize) return { kind: 'error', errno: EIO };
		if (req.write && !this.#p.writable) return { kind: 'error', errno: 30 };
		if (this.footer.diskType === DISK_FIXED) {
			return { kind: 'map', dev: 0, sector: block * this.#spb, writable: this.#p.writable, durable: true };
		}
		const bat = this.#p.bat as Uint32Array;
		const b = Number(block);
		const entry = bat[b] as number;
		const diff = this.footer.diskType === DISK_DIFF;
		if (entry === BAT_UNUSED) {
			const from = diff && this.#p.backing ? await this.#p.backing.locate(block * bs, this.blockSize) : ({ kind: 'zero' } as const);
			if (from.kind === 'error') return from;
			if (!req.write) {
				if (from.kind === 'zero') return { kind: 'zero' };
				return { kind: 'map', dev: from.dev, sector: from.sector, writable: false, temporary: from.temporary };
			}
			const sector = await this.#allocate(b);
			const copyFrom = from.kind === 'map' && !req.wholeBlock ? { dev: from.dev, sector: from.sector } : undefined;
			return { kind: 'map', dev: 0, sector, writable: true, ...(copyFrom ? { copyFrom } : {}) };
		}
		const data = BigInt(entry) + BigInt(this.#bitmapBytes / 512);
		if (!diff) return { kind: 'map', dev: 0, sector: data, writable: this.#p.writable, durable: true };
		const bitmap = await this.#bitmap(b, entry);
		const present = this.#presence(bitmap);
		if (present === 'all') return { kind: 'map', dev: 0, sector: data, writable: this.#p.writable, durable: true };
		// Some (or no) sectors are in the parent: assemble the block.
		const merged = await this.#merge(block, data, bitmap, req.write);
		if (merged.kind === 'error') return merged;
		if (!req.write) {
			if (merged.kind === 'zero') return { kind: 'zero' };
			return { kind: 'map', dev: merged.dev, sector: merged.sector, writable: false, temporary: true };
		}
		// The block becomes whole here: copy the assembled data over it.
		await this.#setBitmapFull(b, entry);
		const copyFrom = merged.kind === 'map' && !req.wholeBlock ? { dev: merged.dev, sector: merged.sector } : undefined;
		return { kind: 'map', dev: 0, sector: data, writable: true, ...(copyFrom ? { copyFrom } : {}) };
	}

	#presence(bitmap: Buffer): 'all' | 'some' {
		const sectors = Number(this.#spb);
		const fullBytes = sectors >> 3;
		for (let i = 0; i < fullBytes; i++) if (bitmap[i] !== 0xff) return 'some';
		const rest = sectors & 7;
		if (rest && ((bitmap[fullBytes] as number) & (0xff << (8 - rest)) & 0xff) !== ((0xff << (8 - rest)) & 0xff)) return 'some';
		return 'all';
	}

	async #bitmap(b: number, entry: number): Promise<Buffer> {
		let bm = this.#bitmaps.get(b);
		if (!bm) {
			bm = await this.#p.file.read(BigInt(entry) * 512n, this.#bitmapBytes, `sector bitmap of block ${b}`);
			this.#bitmaps.set(b, bm);
		}
		return bm;
	}

	/** The block with bitmap-0 sectors from the parent, in the scratch area. */
	async #merge(
		block: bigint,
		data: bigint,
		bitmap: Buffer,
		forWrite: boolean,
	): Promise<{ kind: 'zero' } | { kind: 'error'; errno: number } | { kind: 'map'; dev: number; sector: bigint }> {
		const scratch = this.#p.scratch;
		if (!scratch) return { kind: 'error', errno: EIO };
		const bs = BigInt(this.blockSize);
		const parent = this.#p.backing ? await this.#p.backing.read(block * bs, this.blockSize) : Buffer.alloc(this.blockSize);
		const mine = await this.#p.file.readPadded(data * 512n, this.blockSize);
		for (let s = 0; s < Number(this.#spb); s++) {
			if (((bitmap[s >> 3] as number) >> (7 - (s & 7))) & 1) mine.copy(parent, s * 512, s * 512, s * 512 + 512);
		}
		// For a write the copy must happen even for zeros: bitmap-0 sectors in
		// this file hold whatever was there before.
		if (!forWrite && parent.every((x) => x === 0)) return { kind: 'zero' };
		return { kind: 'map', dev: scratch.dev, sector: await scratch.put(parent) };
	}

	async #setBitmapFull(b: number, entry: number): Promise<void> {
		const bm = Buffer.alloc(this.#bitmapBytes, 0xff);
		await this.#p.file.write(BigInt(entry) * 512n, bm);
		this.#bitmaps.set(b, bm);
		this.#dirty = true;
	}

	/**
	 * A new block at the end of the file; returns its data sector.
	 *
	 * Data and metadata never share a page (see ../page.ts): the bitmap's
	 * page holds nothing of an earlier block and the data starts a page of
	 * its own. The gap costs under 8 KiB per 2 MiB block; VHD allows any
	 * sector-aligned block offset (the old trailing footer stays in the
	 * gap, unreferenced).
	 */
	async #allocate(b: number): Promise<bigint> {
		const p = this.#p;
		const bitmapPage = alignUp(p.nextFree, PAGE);
		const at = alignUp(bitmapPage + BigInt(this.#bitmapBytes), PAGE) - BigInt(this.#bitmapBytes);
		const sector = at / 512n;
		if (sector > 0xfffffffen) throw new DmuError('DMU_ERR_FULL', `${p.path}: the VHD is full (block offsets are 32-bit sectors)`);
		const bm = Buffer.alloc(this.#bitmapBytes, 0xff);
		await p.file.write(at, bm);
		const end = at + BigInt(this.#bitmapBytes) + BigInt(this.blockSize);
		// The footer after the new block also extends the file, so the data
		// area reads as zeros (a hole) until the kernel writes it.
		await p.file.write(end, serializeFooter(this.footer));
		p.nextFree = end;
		(p.bat as Uint32Array)[b] = Number(sector);
		const e = Buffer.alloc(4);
		e.writeUInt32BE(Number(sector));
		await p.file.write((p.header as DynHeader).tableOffset + BigInt(b * 4), e);
		this.#bitmaps.set(b, bm);
		this.#dirty = true;
		return sector + BigInt(this.#bitmapBytes / 512);
	}

	async commit(): Promise<void> {
		if (!this.#dirty) return;
		await this.#p.file.sync();
		this.#dirty = false;
	}

	async close(): Promise<void> {
		if (this.#closed) return;
		this.#closed = true;
		try {
			if (this.#p.writable) await this.commit();
		} finally {
			await this.#p.file.close();
			await this.#p.backing?.close();
		}
	}
}

