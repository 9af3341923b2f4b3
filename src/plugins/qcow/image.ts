/**
 * An opened qcow (v1) image. Clusters map in place; unallocated ones fall
 * through to the backing file (or read as zeros); compressed clusters are
 * inflated into the scratch area and mapped there read-only, and a write
 * to one gets a fresh cluster, copied from that inflated data first.
 *
 * Allocation follows qemu: L2 tables and clusters go at the end of the
 * file, rounded up to the cluster size; L1/L2 entries are written at once
 * and made durable by commit().
 */
import { inflateRawSync } from 'node:zlib';
import { DmuError } from '../../errors.js';
import type { Backing } from '../raw/backing.js';
import { badImage, type ImageFile } from '../raw/io.js';
import type { Capabilities, Image, ImageDevice, MapDecision, MapRequest, ScratchArea } from '../types.js';
import { decodeEntry, type QcowHeader } from './layout.js';

const EIO = 5;
const EROFS = 30;

export interface QcowParts {
	path: string;
	file: ImageFile;
	header: QcowHeader;
	l1: BigUint64Array;
	fileSize: bigint;
	writable: boolean;
	backing?: Backing;
	scratch?: ScratchArea;
}

export type Cluster =
	| { kind: 'unallocated' }
	| { kind: 'data'; offset: bigint }
	| { kind: 'compressed'; offset: bigint; csize: number }
	| { kind: 'bad'; why: string };

export class QcowImage implements Image {
	readonly format = 'qcow';
	readonly virtualSize: bigint;
	readonly blockSize: number;
	readonly devices: ImageDevice[];
	readonly capabilities: Capabilities;
	#p: QcowParts;
	#l2 = new Map<number, BigUint64Array>();
	#l2Entries: number;
	#cs: bigint;
	#end: bigint;
	#dirty = false;
	#closed = false;

	constructor(p: QcowParts) {
		this.#p = p;
		this.virtualSize = p.header.size & ~511n;
		this.blockSize = 1 << p.header.clusterBits;
		this.#cs = BigInt(this.blockSize);
		this.#l2Entries = 1 << p.header.l2Bits;
		this.#end = p.fileSize;
		this.devices = [{ path: p.path, writable: p.writable }, ...(p.backing?.devices ?? [])];
		this.capabilities = { write: p.writable, flush: p.writable, scratch: true };
	}

	get header(): QcowHeader {
		return this.#p.header;
	}

	async #table(i: number): Promise<BigUint64Array | undefined> {
		const off = this.#p.l1[i] as bigint;
		if (off === 0n) return undefined;
		let t = this.#l2.get(i);
		if (!t) {
			const bytes = this.#l2Entries * 8;
			if (off + BigInt(bytes) > this.#end) throw badImage(this.#p.path, `qcow L2 table ${i} at ${off} lies past the end of the file`);
			const raw = await this.#p.file.read(off, bytes, `L2 table ${i}`);
			t = new BigUint64Array(this.#l2Entries);
			for (let j = 0; j < t.length; j++) t[j] = raw.readBigUInt64BE(j * 8);
			this.#l2.set(i, t);
		}
		return t;
	}

	/** Where cluster `c` is stored. */
	async lookup(c: bigint): Promise<Cluster> {
		const i = Number(c >> BigInt(this.#p.header.l2Bits));
		if (i >= this.#p.l1.length) return { kind: 'bad', why: 'cluster past the L1 table' };
		let t: BigUint64Array | undefined;
		try {
			t = await this.#table(i);
		} catch (e) {
			return { kind: 'bad', why: (e as Error).message };
		}
		if (!t) return { kind: 'unallocated' };
		const e = t[Number(c & BigInt(this.#l2Entries - 1))] as bigint;
		if (e === 0n) return { kind: 'unallocated' };
		const d = decodeEntry(e, this.#p.header.clusterBits);
		if (d.compressed) {
			if (d.csize === 0 || d.offset + BigInt(d.csize) > this.#end) return { kind: 'bad', why: `compressed cluster ${c} lies past the end of the file` };
			return { kind: 'compressed', offset: d.offset, csize: d.csize };
		}
		if (d.offset % 512n !== 0n || d.offset + this.#cs > this.#end) return { kind: 'bad', why: `cluster ${c} at ${d.offset} is misaligned or past the end` };
		return { kind: 'data', offset: d.offset };
	}

	async inflate(offset: bigint, csize: number): Promise<Buffer> {
		// qemu reads csize bytes, but the stream may end a little before.
		const avail = Number(this.#end - offset);
		const raw = await this.#p.file.read(offset, Math.min(csize, avail), 'compressed cluster');
		let out: Buffer;
		try {
			out = inflateRawSync(raw, { maxOutputLength: this.blockSize, finishFlush: 2 /* Z_SYNC_FLUSH */ });
		} catch (e) {
			throw badImage(this.#p.path, `compressed cluster at ${offset} does not inflate: ${(e as Error).message}`);
		}
		const full = Buffer.alloc(this.blockSize);
		out.copy(full);
		return full;
	}

	async map(req: MapRequest): Promise<MapDecision> {
		const off = req.block * this.#cs;
		if (req.block < 0n || off >= this.virtualSize) return { kind: 'error', errno: EIO };
		if (req.write && !this.#p.writable) return { kind: 'error', errno: EROFS };
		const c = await this.lookup(req.block);
		switch (c.kind) {
			case 'bad':
				return { kind: 'error', errno: EIO };
			case 'data':
				return { kind: 'map', dev: 0, sector: c.offset / 512n, writable: this.#p.writable, durable: true };
			case 'compressed': {
				const scratch = this.#p.scratch;
				if (!scratch) return { kind: 'error', errno: EIO };
				let data: Buffer;
				try {
					data = await this.inflate(c.offset, c.csize);
				} catch {
					return { kind: 'error', errno: EIO };
				}
				const at = await scratch.put(data);
				if (!req.write) return { kind: 'map', dev: scratch.dev, sector: at, writable: false, temporary: true };
				const sector = await this.#allocate(req.block);
				const copy = req.wholeBlock ? {} : { copyFrom: { dev: scratch.dev, sector: at } };
				return { kind: 'map', dev: 0, sector, writable: true, ...copy };
			}
			case 'unallocated': {
				const from = this.#p.backing ? await this.#p.backing.locate(off, this.blockSize) : ({ kind: 'zero' } as const);
				if (from.kind === 'error') return from;
				if (!req.write) {
					if (from.kind === 'zero') return { kind: 'zero' };
					return { kind: 'map', dev: from.dev, sector: from.sector, writable: false, temporary: from.temporary };
				}
				const sector = await this.#allocate(req.block);
				const copy = from.kind === 'map' && !req.wholeBlock ? { copyFrom: { dev: from.dev, sector: from.sector } } : {};
				return { kind: 'map', dev: 0, sector, writable: true, ...copy };
			}
		}
	}

	#roundUp(n: bigint): bigint {
		return ((n + this.#cs - 1n) / this.#cs) * this.#cs;
	}

	async #allocate(c: bigint): Promise<bigint> {
		const p = this.#p;
		const i = Number(c >> BigInt(p.header.l2Bits));
		let t = await this.#table(i);
		if (!t) {
			const at = this.#roundUp(this.#end);
			const bytes = this.#l2Entries * 8;
			await p.file.write(at, Buffer.alloc(bytes));
			this.#end = at + BigInt(bytes);
			t = new BigUint64Array(this.#l2Entries);
			this.#l2.set(i, t);
			p.l1[i] = at;
			const e = Buffer.alloc(8);
			e.writeBigUInt64BE(at);
			await p.file.write(p.header.l1Offset + BigInt(i * 8), e);
		}
		const at = this.#roundUp(this.#end);
		if (at >= 1n << BigInt(63 - p.header.clusterBits)) throw new DmuError('DMU_ERR_FULL', `${p.path}: qcow image file is full`);
		this.#end = at + this.#cs;
		// The cluster exists (as a hole reading zeros) before anyone writes it.
		await p.file.truncate(this.#end);
		const j = Number(c & BigInt(this.#l2Entries - 1));
		t[j] = at;
		const e = Buffer.alloc(8);
		e.writeBigUInt64BE(at);
		await p.file.write((p.l1[i] as bigint) + BigInt(j * 8), e);
		this.#dirty = true;
		return at / 512n;
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
