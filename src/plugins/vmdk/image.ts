/**
 * An opened VMDK: a list of extents laid end to end over the virtual disk.
 * Flat extents map in place; sparse extents go through their grain tables
 * (SparseExtent); ZERO extents read as zeros. Blocks never straddle two
 * extents (open() picks a block size dividing every boundary).
 */
import { randomInt } from 'node:crypto';
import type { Backing } from '../raw/backing.js';
import type { ImageFile } from '../raw/io.js';
import type { Capabilities, Image, ImageDevice, MapDecision, MapRequest, ScratchArea } from '../types.js';
import { hex8 } from './layout.js';
import type { SparseExtent } from './sparse.js';

const EIO = 5;
const EROFS = 30;

export interface Extent {
	/** Byte range of the virtual disk it holds. */
	start: bigint;
	size: bigint;
	type: 'flat' | 'sparse' | 'zero';
	dev: number;
	/** Byte offset of the extent's data in a flat file. */
	offset: bigint;
	sparse?: SparseExtent;
	writable: boolean;
}

export interface VmdkParts {
	path: string;
	createType: string;
	cid: number;
	extents: Extent[];
	devices: ImageDevice[];
	blockSize: number;
	writable: boolean;
	backing?: Backing;
	scratch?: ScratchArea;
	/** Where the descriptor lives, to give it a new CID on the first write. */
	descriptor?: { file: ImageFile; offset: bigint; space: number; text: string };
	/** Files to close. */
	files: ImageFile[];
}

export class VmdkImage implements Image {
	readonly format = 'vmdk';
	readonly virtualSize: bigint;
	readonly blockSize: number;
	readonly devices: ImageDevice[];
	readonly capabilities: Capabilities;
	#p: VmdkParts;
	#cidUpdated = false;
	#closed = false;

	constructor(p: VmdkParts) {
		this.#p = p;
		const last = p.extents[p.extents.length - 1];
		this.virtualSize = last ? last.start + last.size : 0n;
		this.blockSize = p.blockSize;
		this.devices = [...p.devices, ...(p.backing?.devices ?? [])];
		const compressed = p.extents.some((e) => e.sparse?.compressed);
		this.capabilities = { write: p.writable, flush: p.writable, scratch: compressed || p.backing !== undefined };
	}

	get createType(): string {
		return this.#p.createType;
	}

	get cid(): number {
		return this.#p.cid;
	}

	#extentAt(off: bigint): Extent | undefined {
		for (const e of this.#p.extents) if (off >= e.start && off < e.start + e.size) return e;
		return undefined;
	}

	async map(req: MapRequest): Promise<MapDecision> {
		const bs = BigInt(this.blockSize);
		const off = req.block * bs;
		const e = req.block >= 0n ? this.#extentAt(off) : undefined;
		if (!e) return { kind: 'error', errno: EIO };
		const writable = this.#p.writable && e.writable;
		if (req.write && !writable) return { kind: 'error', errno: EROFS };
		if (req.write) await this.#touchCid();
		if (e.type === 'zero') return { kind: 'zero' };
		if (e.type === 'flat') {
			return { kind: 'map', dev: e.dev, sector: (e.offset + off - e.start) / 512n, writable, durable: true };
		}
		const sp = e.sparse as SparseExtent;
		const grain = (off - e.start) / bs;
		const g = await sp.lookup(grain);
		switch (g.kind) {
			case 'bad':
				return { kind: 'error', errno: EIO };
			case 'data':
				return { kind: 'map', dev: e.dev, sector: g.sector, writable, durable: true };
			case 'compressed': {
				const scratch = this.#p.scratch;
				if (!scratch) return { kind: 'error', errno: EIO };
				let data: Buffer;
				try {
					data = await sp.readCompressed(g.sector);
				} catch {
					return { kind: 'error', errno: EIO }; // a damaged grain fails its reads, not the disk
				}
				return { kind: 'map', dev: scratch.dev, sector: await scratch.put(data), writable: false, temporary: true };
			}
			case 'zero':
				if (!req.write) return { kind: 'zero' };
				return { kind: 'map', dev: e.dev, sector: await sp.allocate(grain), writable: true };
			case 'unallocated': {
				const from = this.#p.backing ? await this.#p.backing.locate(off, this.blockSize) : ({ kind: 'zero' } as const);
				if (from.kind === 'error') return from;
				if (!req.write) {
					if (from.kind === 'zero') return { kind: 'zero' };
					return { kind: 'map', dev: from.dev, sector: from.sector, writable: false, temporary: from.temporary };
				}
				const sector = await sp.allocate(grain);
				const copy = from.kind === 'map' && !req.wholeBlock ? { copyFrom: { dev: from.dev, sector: from.sector } } : {};
				return { kind: 'map', dev: e.dev, sector, writable: true, ...copy };
			}
		}
	}

	/**
	 * A new CID on the first write, as VMware and qemu do: children made
	 * from this disk can tell it changed under them.
	 */
	async #touchCid(): Promise<void> {
		if (this.#cidUpdated) return;
		this.#cidUpdated = true;
		const d = this.#p.descriptor;
		if (!d) return;
		const cid = randomInt(0, 0xffffffff);
		const text = d.text.replace(/^CID=[0-9a-fA-F]+$/m, `CID=${hex8(cid)}`);
		const buf = Buffer.from(text, 'latin1');
		if (buf.length > d.space) return;
		const padded = Buffer.alloc(Math.max(buf.length, Math.min(d.space, d.text.length)));
		buf.copy(padded);
		await d.file.write(d.offset, padded);
		if (d.space === Number.MAX_SAFE_INTEGER) await d.file.truncate(buf.length);
		this.#p.cid = cid;
	}

	async commit(): Promise<void> {
		for (const e of this.#p.extents) await e.sparse?.sync();
		if (this.#cidUpdated && this.#p.descriptor) await this.#p.descriptor.file.sync();
	}

	async close(): Promise<void> {
		if (this.#closed) return;
		this.#closed = true;
		try {
			if (this.#p.writable) await this.commit();
		} finally {
			for (const f of this.#p.files) await f.close().catch(() => undefined);
			await this.#p.backing?.close();
		}
	}
}
