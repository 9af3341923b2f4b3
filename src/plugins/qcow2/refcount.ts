/**
 * Refcounts and the cluster allocator.
 *
 * Refcount blocks are loaded on demand and kept (their size is ~ refcount
 * bits / cluster bits of the data: 32 KiB per GiB with 64 KiB clusters).
 * Allocation only appends at the end of the file: a cluster we hand out was
 * never part of the image, so it reads as zeros and no crash can make two
 * owners of it. Freed clusters get refcount 0 (not a leak for qemu-img).
 *
 * Ordering rule (crash consistency): increments are written before any L2/L1
 * entry that points at the new cluster; decrements (`deferFree`) are applied
 * only after the metadata that stopped referencing the cluster is durable.
 */
import { DmuError } from '../../errors.js';
import type { ImageFile } from './file.js';
import { bad, getRefcount, type Header, MAX_REFTABLE_BYTES, maxRefcount, OFFSET_MASK, setRefcount } from './layout.js';

export class Refcounts {
	readonly cs: number;
	readonly order: number;
	/** Refcount entries in one refcount block. */
	readonly perBlock: number;
	/** Refcount table: offsets of refcount blocks (0 = none). */
	table: number[] = [];
	tableOffset: number;
	tableClusters: number;
	#blocks = new Map<number, Buffer>();
	#dirtyBlocks = new Set<number>();
	#tableDirty = false;
	/** The table moved: the header must be rewritten; the old one freed afterwards. */
	#movedFrom: { offset: number; clusters: number } | undefined;
	#pendingFree: number[] = [];
	/** Byte offset of the next cluster to hand out. */
	nextFree = 0;

	constructor(
		readonly file: ImageFile,
		h: Header,
	) {
		this.cs = h.clusterSize;
		this.order = h.refcountOrder;
		this.perBlock = (h.clusterSize * 8) / 2 ** h.refcountOrder;
		this.tableOffset = h.refcountTableOffset;
		this.tableClusters = h.refcountTableClusters;
	}

	/** Load the refcount table (blocks come on demand). */
	async load(): Promise<void> {
		const raw = await this.file.read(this.tableOffset, this.tableClusters * this.cs, 'refcount table');
		const n = raw.length / 8;
		this.table = new Array<number>(n);
		for (let i = 0; i < n; i++) {
			const e = raw.readBigUInt64BE(i * 8);
			const off = Number(e & OFFSET_MASK);
			if (e & ~OFFSET_MASK) throw bad(this.file.path, `refcount table entry ${i} has reserved bits set`);
			if (off !== 0 && (off % this.cs !== 0 || off + this.cs > this.file.size)) {
				throw bad(this.file.path, `refcount block ${i} at ${off} lies outside the file`);
			}
			this.table[i] = off;
		}
		this.nextFree = Math.ceil(this.file.size / this.cs) * this.cs;
	}

	async #block(ti: number): Promise<Buffer> {
		let b = this.#blocks.get(ti);
		if (!b) {
			const off = this.table[ti] ?? 0;
			b = off ? await this.file.read(off, this.cs, 'refcount block') : Buffer.alloc(this.cs);
			this.#blocks.set(ti, b);
		}
		return b;
	}

	async get(cluster: number): Promise<number> {
		const ti = Math.floor(cluster / this.perBlock);
		if (ti >= this.table.length || !this.table[ti]) return 0;
		return getRefcount(await this.#block(ti), this.order, cluster % this.perBlock);
	}

	/** Set a refcount, creating the refcount block (and growing the table) when needed. */
	async set(cluster: number, value: number): Promise<void> {
		if (value < 0 || value > maxRefcount(this.order)) {
			throw new DmuError('DMU_ERR_REFCOUNT', `qcow2: ${this.file.path}: refcount of cluster ${cluster} would be ${value} (out of range)`);
		}
		const ti = Math.floor(cluster / this.perBlock);
		if (!this.table[ti]) {
			if (value === 0) return;
			await this.#newBlock(ti);
		}
		const blk = await this.#block(ti);
		setRefcount(blk, this.order, cluster % this.perBlock, value);
		this.#dirtyBlocks.add(ti);
	}

	async add(cluster: number, delta: number): Promise<void> {
		await this.set(cluster, (await this.get(cluster)) + delta);
	}

	/** Hand out `n` contiguous new clusters (refcount 1); returns the byte offset. */
	async alloc(n = 1): Promise<number> {
		const off = await this.#take(n);
		for (let i = 0; i < n; i++) await this.add(off / this.cs + i, 1);
		return off;
	}

	/**
	 * Hand out up to `max` new contiguous clusters (refcount 1) in one step,
	 * for a writer that fills many clusters at once (`dmu convert` into a
	 * new image): one refcount block lookup per run, where alloc() costs an
	 * async chain per cluster (~20 us each, most of the CPU a conversion
	 * spent in qcow2). The run ends at the end of a refcount block: the
	 * next block may not exist yet, and creating it takes a cluster at the
	 * end of the file. Returns the run's byte offset and its length.
	 */
	async allocRun(max: number): Promise<{ off: number; count: number }> {
		if (!(max >= 1)) throw new DmuError('DMU_ERR_PLUGIN_BUG', `qcow2: allocRun(${max})`);
		for (;;) {
			const first = this.nextFree / this.cs;
			const ti = Math.floor(first / this.perBlock);
			if (!this.table[ti]) {
				// Creating the block (and maybe a larger table) moves nextFree: look again.
				await this.#newBlock(ti);
				continue;
			}
			const blk = await this.#block(ti);
			const at = first % this.perBlock;
			const room = Math.min(max, this.perBlock - at);
			// Past the end of the file every cluster should be free; a (corrupt)
			// refcount saying otherwise ends the run or is stepped over, never doubled.
			let n = 0;
			while (n < room && getRefcount(blk, this.order, at + n) === 0) n++;
			if (n === 0) {
				this.nextFree += this.cs;
				continue;
			}
			for (let i = 0; i < n; i++) setRefcount(blk, this.order, at + i, 1);
			this.#dirtyBlocks.add(ti);
			this.nextFree += n * this.cs;
			await this.file.growTo(this.nextFree);
			return { off: first * this.cs, count: n };
		}
	}

	/**
	 * Reserve `n` clusters at the end. Past the end of the file every cluster
	 * should be free; a (corrupt) refcount saying otherwise is stepped over,
	 * never doubled.
	 */
	async #take(n: number): Promise<number> {
		for (let i = 0; i < n; i++) {
			if ((await this.get(this.nextFree / this.cs + i)) !== 0) {
				this.nextFree += (i + 1) * this.cs;
				i = -1;
			}
		}
		const off = this.nextFree;
		this.nextFree += n * this.cs;
		await this.file.growTo(this.nextFree);
		return off;
	}

	async #newBlock(ti: number): Promise<void> {
		if (ti >= this.table.length) await this.#growTable(ti);
		// Counting the new table's clusters may have created this very block.
		if (this.table[ti]) return;
		const off = await this.#take(1);
		if (this.table[ti]) throw new DmuError('DMU_ERR_PLUGIN_BUG', `qcow2: refcount block ${ti} created twice`);
		this.table[ti] = off;
		this.#blocks.set(ti, Buffer.alloc(this.cs));
		this.#dirtyBlocks.add(ti);
		this.#tableDirty = true;
		// The block counts itself (maybe in itself: that block now exists).
		await this.add(off / this.cs, 1);
	}

	/** Move the refcount table to a larger place at the end of the file. */
	async #growTable(ti: number): Promise<void> {
		// Room for the wanted entry, the blocks the new table itself needs, and slack.
		const entries = Math.max(ti + 2, this.table.length * 2);
		const clusters = Math.ceil((entries * 8) / this.cs);
		if (clusters * this.cs > MAX_REFTABLE_BYTES) {
			throw new DmuError('DMU_ERR_FULL', `qcow2: ${this.file.path}: refcount table would exceed ${MAX_REFTABLE_BYTES} bytes`);
		}
		const off = await this.#take(clusters);
		if (!this.#movedFrom) this.#movedFrom = { offset: this.tableOffset, clusters: this.tableClusters };
		else for (let i = 0; i < this.tableClusters; i++) this.#pendingFree.push(this.tableOffset / this.cs + i);
		const old = this.table;
		this.table = new Array<number>((clusters * this.cs) / 8).fill(0);
		for (let i = 0; i < old.length; i++) this.table[i] = old[i] ?? 0;
		this.tableOffset = off;
		this.tableClusters = clusters;
		this.#tableDirty = true;
		for (let i = 0; i < clusters; i++) await this.add(off / this.cs + i, 1);
	}

	/** Drop one reference once the metadata no longer pointing here is durable. */
	deferFree(cluster: number): void {
		this.#pendingFree.push(cluster);
	}

	get dirty(): boolean {
		return this.#dirtyBlocks.size > 0 || this.#tableDirty || this.#pendingFree.length > 0;
	}

	/**
	 * Write refcount blocks, then the table, each followed by a sync, so a
	 * table entry never points at a block not yet on disk. Returns the new
	 * table place when the header must be updated.
	 */
	async writeBack(): Promise<{ offset: number; clusters: number } | undefined> {
		if (this.#dirtyBlocks.size) {
			for (const ti of [...this.#dirtyBlocks].sort((a, b) => a - b)) {
				const blk = this.#blocks.get(ti);
				const off = this.table[ti];
				if (blk && off) await this.file.write(off, blk);
			}
			this.#dirtyBlocks.clear();
			await this.file.sync();
		}
		if (this.#tableDirty) {
			const raw = Buffer.alloc(this.tableClusters * this.cs);
			for (const [i, off] of this.table.entries()) raw.writeBigUInt64BE(BigInt(off), i * 8);
			await this.file.write(this.tableOffset, raw);
			this.#tableDirty = false;
			await this.file.sync();
			if (this.#movedFrom) return { offset: this.tableOffset, clusters: this.tableClusters };
		}
		return undefined;
	}

	/** After the header names the new table: the old one may be freed. */
	tableMoved(): void {
		const m = this.#movedFrom;
		if (!m) return;
		for (let i = 0; i < m.clusters; i++) this.#pendingFree.push(m.offset / this.cs + i);
		this.#movedFrom = undefined;
	}

	/** Apply deferred frees (in memory; a later writeBack makes them durable). */
	async applyFrees(): Promise<void> {
		const frees = this.#pendingFree;
		this.#pendingFree = [];
		for (const c of frees) {
			const v = await this.get(c);
			if (v > 0) await this.set(c, v - 1);
		}
	}

	/** Call `fn` for every cluster a refcount block describes (in order). */
	async forEachStored(fn: (cluster: number, refcount: number) => void): Promise<void> {
		for (let ti = 0; ti < this.table.length; ti++) {
			if (!this.table[ti]) continue;
			const blk = await this.#block(ti);
			for (let j = 0; j < this.perBlock; j++) fn(ti * this.perBlock + j, getRefcount(blk, this.order, j));
		}
	}

	/** Highest cluster index the refcount structure could describe, plus one. */
	get coveredClusters(): number {
		return this.table.length * this.perBlock;
	}
}
