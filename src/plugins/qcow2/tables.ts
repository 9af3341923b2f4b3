/**
 * The active L1 table (in memory, whole) and an L2 table cache with
 * write-back. Clean L2 tables are evicted past a byte budget; dirty ones
 * stay until commit writes them.
 */
import type { ImageFile } from './file.js';
import { bad, type Header, OFFSET_MASK } from './layout.js';

/** Budget for clean cached L2 tables: 32 MiB covers 256 GiB with 64 KiB clusters. */
const L2_CACHE_BYTES = 32 * 1024 * 1024;

export class Tables {
	l1: bigint[] = [];
	#l1Dirty = false;
	#l2 = new Map<number, Buffer>();
	#dirtyL2 = new Set<number>();
	#cached = 0;

	constructor(
		readonly file: ImageFile,
		readonly h: Header,
	) {}

	async load(): Promise<void> {
		const n = this.h.l1Size;
		const raw = n ? await this.file.read(this.h.l1Offset, n * 8, 'L1 table') : Buffer.alloc(0);
		this.l1 = new Array<bigint>(n);
		for (let i = 0; i < n; i++) this.l1[i] = raw.readBigUInt64BE(i * 8);
	}

	/** Offset of the L2 table for L1 index `i` (0 = none), validated. */
	l2Offset(i: number): number {
		const e = this.l1[i] ?? 0n;
		const off = Number(e & OFFSET_MASK);
		if (off === 0) return 0;
		if (off % this.h.clusterSize !== 0 || off + this.h.clusterSize > this.file.size) {
			throw bad(this.file.path, `L2 table at ${off} (L1 index ${i}) lies outside the file`);
		}
		return off;
	}

	async l2(off: number): Promise<Buffer> {
		let t = this.#l2.get(off);
		if (t) {
			// refresh LRU position
			this.#l2.delete(off);
			this.#l2.set(off, t);
			return t;
		}
		t = await this.file.read(off, this.h.clusterSize, 'L2 table');
		this.#l2.set(off, t);
		this.#cached += t.length;
		this.#evict();
		return t;
	}

	/** A new (or copied) L2 table that exists only in memory until commit. */
	adopt(off: number, table: Buffer): void {
		this.#l2.set(off, table);
		this.#cached += table.length;
		this.#dirtyL2.add(off);
	}

	markL2(off: number): void {
		this.#dirtyL2.add(off);
	}

	setL1(i: number, v: bigint): void {
		this.l1[i] = v;
		this.#l1Dirty = true;
	}

	#evict(): void {
		for (const [off, t] of this.#l2) {
			if (this.#cached <= L2_CACHE_BYTES) break;
			if (this.#dirtyL2.has(off)) continue;
			this.#l2.delete(off);
			this.#cached -= t.length;
		}
	}

	get dirty(): boolean {
		return this.#l1Dirty || this.#dirtyL2.size > 0;
	}

	/** L2 tables first, synced, then the L1 table: L1 never names an unwritten L2. */
	async writeBack(): Promise<void> {
		if (this.#dirtyL2.size) {
			for (const off of [...this.#dirtyL2].sort((a, b) => a - b)) {
				const t = this.#l2.get(off);
				if (t) await this.file.write(off, t);
			}
			this.#dirtyL2.clear();
			await this.file.sync();
			this.#evict();
		}
		if (this.#l1Dirty) {
			const raw = Buffer.alloc(this.l1.length * 8);
			for (const [i, e] of this.l1.entries()) raw.writeBigUInt64BE(e, i * 8);
			await this.file.write(this.h.l1Offset, raw);
			this.#l1Dirty = false;
			await this.file.sync();
		}
	}
}
