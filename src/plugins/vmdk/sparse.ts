/**
 * One sparse VMDK extent: header, grain directory (GD), grain tables (GT)
 * and, when the header asks for it, the redundant GD with its own GTs,
 * kept identical on every update. Grains are looked up GD -> GT -> sector;
 * new grains (and GTs, for images that lack them) go at the end of file.
 * Compressed extents (streamOptimized) are read-only: a grain is a marker
 * (LBA, size) followed by a zlib stream.
 */
import { inflateSync } from 'node:zlib';
import { DmuError } from '../../errors.js';
import { alignUp, PAGE } from '../page.js';
import { badImage, type ImageFile } from '../raw/io.js';
import {
	FLAG_COMPRESS,
	FLAG_MARKER,
	FLAG_RGD,
	FLAG_ZERO_GRAIN,
	GD_AT_END,
	GTE_ZEROED,
	HEADER_SIZE,
	MARKER_FOOTER,
	parseHeader,
	type SparseHeader,
} from './layout.js';

export type Grain =
	| { kind: 'unallocated' }
	| { kind: 'zero' }
	| { kind: 'data'; sector: bigint }
	| { kind: 'compressed'; sector: bigint }
	| { kind: 'bad'; why: string };

const MAX_GD_ENTRIES = 1 << 24;

export class SparseExtent {
	#gts = new Map<number, Uint32Array>();
	#rgts = new Map<number, Uint32Array>();
	#dirty = false;

	private constructor(
		readonly file: ImageFile,
		readonly header: SparseHeader,
		readonly gd: Uint32Array,
		readonly rgd: Uint32Array | undefined,
		public nextSector: bigint,
		public fileSize: bigint,
	) {}

	get grainBytes(): number {
		return Number(this.header.grainSize) * 512;
	}

	get compressed(): boolean {
		return (this.header.flags & FLAG_COMPRESS) !== 0;
	}

	get dirty(): boolean {
		return this.#dirty;
	}

	static async open(file: ImageFile): Promise<SparseExtent> {
		const path = file.path;
		const fileSize = await file.size();
		let h = parseHeader(await file.read(0, HEADER_SIZE, 'VMDK header'));
		if (!h) throw badImage(path, 'not a sparse VMDK extent (no KDMV magic)');
		if (h.version < 1 || h.version > 3) {
			throw new DmuError('DMU_ERR_UNSUPPORTED', `${path}: VMDK sparse extent version ${h.version} is not supported`);
		}
		if (h.gdOffset === GD_AT_END) {
			// streamOptimized written in one pass: the real header is in the
			// footer, before the end-of-stream marker.
			if (fileSize < 1536n + 512n) throw badImage(path, 'VMDK stream is too short for its footer');
			const marker = await file.read(fileSize - 1536n, 512, 'VMDK footer marker');
			const footer = parseHeader(await file.read(fileSize - 1024n, HEADER_SIZE, 'VMDK footer'));
			if (marker.readUInt32LE(12) !== MARKER_FOOTER || !footer || footer.gdOffset === GD_AT_END) {
				throw badImage(path, 'VMDK header says the grain directory is at the end but there is no valid footer');
			}
			h = { ...footer, descriptorOffset: h.descriptorOffset, descriptorSize: h.descriptorSize };
		}
		const gs = h.grainSize;
		if (gs < 1n || gs > 16384n || (gs & (gs - 1n)) !== 0n) {
			throw new DmuError('DMU_ERR_UNSUPPORTED', `${path}: VMDK grain size of ${gs} sectors is not supported (a power of two up to 8 MiB)`);
		}
		if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > 65536) throw badImage(path, `VMDK has ${h.numGTEsPerGT} entries per grain table`);
		if (h.capacity === 0n || h.capacity > 1n << 40n) throw badImage(path, `VMDK extent capacity ${h.capacity} sectors is out of range`);
		if ((h.flags & FLAG_COMPRESS) && h.compressAlgorithm !== 1) {
			throw new DmuError('DMU_ERR_UNSUPPORTED', `${path}: VMDK compression algorithm ${h.compressAlgorithm} is not supported`);
		}
		const perGd = gs * BigInt(h.numGTEsPerGT);
		const entries = (h.capacity + perGd - 1n) / perGd;
		if (entries > BigInt(MAX_GD_ENTRIES)) throw badImage(path, `VMDK grain directory of ${entries} entries is too large`);
		const gtBytes = BigInt(h.numGTEsPerGT) * 4n;
		const readGd = async (off: bigint, what: string) => {
			if (off === 0n || off * 512n + entries * 4n > fileSize) throw badImage(path, `VMDK ${what} at sector ${off} lies outside the file`);
			const raw = await file.read(off * 512n, Number(entries) * 4, what);
			const gd = new Uint32Array(Number(entries));
			for (let i = 0; i < gd.length; i++) {
				const e = raw.readUInt32LE(i * 4);
				if (e !== 0 && BigInt(e) * 512n + gtBytes > fileSize) {
					throw badImage(path, `VMDK ${what} entry ${i} points past the end of the file`);
				}
				gd[i] = e;
			}
			return gd;
		};
		const gd = await readGd(h.gdOffset, 'grain directory');
		const rgd = h.flags & FLAG_RGD && h.rgdOffset !== 0n ? await readGd(h.rgdOffset, 'redundant grain directory') : undefined;
		const next = (fileSize + 511n) / 512n;
		return new SparseExtent(file, h, gd, rgd, next, fileSize);
	}

	/** The descriptor text embedded in a monolithic sparse file, if any. */
	async descriptor(): Promise<string | undefined> {
		const { descriptorOffset: off, descriptorSize: n } = this.header;
		if (off === 0n || n === 0n) return undefined;
		if (n > 2048n || (off + n) * 512n > this.fileSize) throw badImage(this.file.path, 'VMDK embedded descriptor lies outside the file');
		return (await this.file.read(off * 512n, Number(n) * 512, 'VMDK descriptor')).toString('latin1').replace(/\0.*$/s, '');
	}

	async #gt(table: Map<number, Uint32Array>, gd: Uint32Array, i: number): Promise<Uint32Array | undefined> {
		const off = gd[i] as number;
		if (off === 0) return undefined;
		let gt = table.get(i);
		if (!gt) {
			const n = this.header.numGTEsPerGT;
			const raw = await this.file.read(BigInt(off) * 512n, n * 4, `grain table ${i}`);
			gt = new Uint32Array(n);
			for (let j = 0; j < n; j++) gt[j] = raw.readUInt32LE(j * 4);
			table.set(i, gt);
		}
		return gt;
	}

	async lookup(grain: bigint): Promise<Grain> {
		const n = BigInt(this.header.numGTEsPerGT);
		const gdi = Number(grain / n);
		if (gdi >= this.gd.length) return { kind: 'bad', why: 'grain past the extent' };
		const gt = await this.#gt(this.#gts, this.gd, gdi);
		if (!gt) return { kind: 'unallocated' };
		const e = gt[Number(grain % n)] as number;
		if (e === 0) return { kind: 'unallocated' };
		if (e === GTE_ZEROED && this.header.flags & FLAG_ZERO_GRAIN) return { kind: 'zero' };
		const sector = BigInt(e);
		if (this.compressed) {
			if (sector * 512n + 12n > this.fileSize) return { kind: 'bad', why: `compressed grain at sector ${sector} past the end of the file` };
			return { kind: 'compressed', sector };
		}
		if (sector * 512n + BigInt(this.grainBytes) > this.fileSize) {
			return { kind: 'bad', why: `grain at sector ${sector} past the end of the file` };
		}
		return { kind: 'data', sector };
	}

	/** A compressed grain's data, inflated to one whole grain. */
	async readCompressed(sector: bigint): Promise<Buffer> {
		const at = sector * 512n;
		const gb = this.grainBytes;
		let data: Buffer;
		if (this.header.flags & FLAG_MARKER) {
			const m = await this.file.read(at, 12, 'grain marker');
			const size = m.readUInt32LE(8);
			if (size === 0 || size > gb * 2 + 4096 || at + 12n + BigInt(size) > this.fileSize) {
				throw badImage(this.file.path, `compressed grain at sector ${sector} has a bad size ${size}`);
			}
			data = await this.file.read(at + 12n, size, 'compressed grain');
		} else {
			const left = Number(this.fileSize - at);
			data = await this.file.read(at, Math.min(gb * 2 + 4096, left), 'compressed grain');
		}
		let out: Buffer;
		try {
			out = inflateSync(data, { maxOutputLength: gb });
		} catch (e) {
			throw badImage(this.file.path, `compressed grain at sector ${sector} does not inflate: ${(e as Error).message}`);
		}
		if (out.length === gb) return out;
		const full = Buffer.alloc(gb);
		out.copy(full);
		return full;
	}

	async #setEntry(table: Map<number, Uint32Array>, gd: Uint32Array, gdi: number, j: number, value: number): Promise<void> {
		let gt = await this.#gt(table, gd, gdi);
		if (!gt) {
			// No grain table here yet: add a zeroed one at the end of the file.
			const bytes = Math.ceil((this.header.numGTEsPerGT * 4) / 512) * 512;
			const sector = this.nextSector;
			this.nextSector += BigInt(bytes / 512);
			await this.file.write(sector * 512n, Buffer.alloc(bytes));
			gd[gdi] = Number(sector);
			const e = Buffer.alloc(4);
			e.writeUInt32LE(Number(sector));
			const gdOff = gd === this.gd ? this.header.gdOffset : this.header.rgdOffset;
			await this.file.write(gdOff * 512n + BigInt(gdi * 4), e);
			gt = new Uint32Array(this.header.numGTEsPerGT);
			table.set(gdi, gt);
		}
		gt[j] = value;
		const e = Buffer.alloc(4);
		e.writeUInt32LE(value);
		await this.file.write(BigInt(gd[gdi] as number) * 512n + BigInt(j * 4), e);
	}

	/** A new grain at the end of the file; returns its sector. */
	async allocate(grain: bigint): Promise<bigint> {
		const n = BigInt(this.header.numGTEsPerGT);
		const gdi = Number(grain / n);
		const j = Number(grain % n);
		const gsz = this.header.grainSize;
		// Make sure both tables exist before placing the grain after them.
		await this.#ensureTables(gdi);
		// The grain starts a page of its own: tables written through the
		// page cache must not share a page with data (see ../page.ts).
		const sector = alignUp(this.nextSector, PAGE / 512n);
		if (sector + gsz > 0xffffffffn) throw new DmuError('DMU_ERR_FULL', `${this.file.path}: the VMDK extent is full (32-bit grain offsets)`);
		this.nextSector = sector + gsz;
		// Extend the file first: the grain must exist (and read as zeros)
		// before anyone writes part of it.
		await this.file.truncate(this.nextSector * 512n);
		this.fileSize = this.nextSector * 512n;
		await this.#setEntry(this.#gts, this.gd, gdi, j, Number(sector));
		if (this.rgd) await this.#setEntry(this.#rgts, this.rgd, gdi, j, Number(sector));
		this.#dirty = true;
		return sector;
	}

	async #ensureTables(gdi: number): Promise<void> {
		if (this.gd[gdi] === 0 || (this.rgd && this.rgd[gdi] === 0)) {
			// Writing an unallocated entry's current value creates the tables.
			const gt = await this.#gt(this.#gts, this.gd, gdi);
			await this.#setEntry(this.#gts, this.gd, gdi, 0, gt ? (gt[0] as number) : 0);
			if (this.rgd) {
				const rgt = await this.#gt(this.#rgts, this.rgd, gdi);
				await this.#setEntry(this.#rgts, this.rgd, gdi, 0, rgt ? (rgt[0] as number) : gt ? (gt[0] as number) : 0);
			}
			this.fileSize = this.nextSector * 512n;
		}
	}

	async sync(): Promise<void> {
		if (!this.#dirty) return;
		await this.file.sync();
		this.#dirty = false;
	}
}
