/**
 * An open qcow2 image: guest clusters to host clusters, as MapDecisions.
 *
 * One map() or commit() runs at a time (a promise-chain lock): allocation
 * and table updates span awaits and must not interleave.
 *
 * Device 0 is the qcow2 file; the backing chain's devices follow. Data
 * clusters are mapped in place; compressed clusters and partially allocated
 * (extended L2) clusters are materialised into the scratch device, read-only
 * and temporary; any write allocates a normal cluster.
 */
import type { Logger } from 'pino';
import { DmuError } from '../../errors.js';
import type { Capabilities, Image, ImageDevice, MapDecision, MapRequest, OpenOptions } from '../types.js';
import { Backing } from './backing.js';
import { readCompressed } from './compressed.js';
import {
	ALL_SUBCLUSTERS,
	bad,
	COMPRESSED,
	COPIED,
	compressedRef,
	type Header,
	Incompat,
	OFFSET_MASK,
	ZERO_FLAG,
} from './layout.js';
import { isEmptyEntry, setDataEntry } from './l2-entry.js';
import { type OpenedParts, openParts, repairRefcounts, writeHeaderFields } from './metadata.js';

const EIO = 5;

/** What an L2 entry says about one guest cluster. */
type Cluster =
	| { kind: 'unallocated'; host: number }
	| { kind: 'zero'; host: number }
	| { kind: 'data'; host: number; copied: boolean }
	| { kind: 'compressed'; entry: bigint }
	/** Extended L2: some subclusters allocated, zero or from the backing. */
	| { kind: 'partial'; host: number; alloc: number; zeros: number };

/** Guest clusters [block, block + count) live at consecutive host clusters from byte `host`. */
export interface ClusterRun {
	block: number;
	host: number;
	count: number;
}

export class Qcow2Image implements Image {
	readonly format = 'qcow2';
	readonly virtualSize: bigint;
	readonly blockSize: number;
	readonly devices: readonly ImageDevice[];
	readonly capabilities: Capabilities;
	readonly #p: OpenedParts;
	readonly #h: Header;
	readonly #rw: boolean;
	readonly #backing: Backing | undefined;
	readonly #opts: OpenOptions;
	readonly #log: Logger | undefined;
	/** Scratch sectors of materialised clusters, until the cluster is written. */
	#scratchOf = new Map<number, bigint>();
	#lock: Promise<unknown> = Promise.resolve();
	/** Metadata found corrupt: no more writes or metadata updates. */
	#corrupt = false;

	private constructor(p: OpenedParts, rw: boolean, backing: Backing | undefined, opts: OpenOptions) {
		this.#p = p;
		this.#h = p.h;
		this.#rw = rw;
		this.#backing = backing;
		this.#opts = opts;
		this.#log = opts.log?.child({ qcow2: p.file.path });
		this.virtualSize = BigInt(p.h.virtualSize);
		this.blockSize = p.h.clusterSize;
		this.devices = [{ path: p.file.path, writable: rw }, ...(backing?.devices ?? [])];
		this.capabilities = { write: rw, flush: rw, scratch: true };
	}

	static async open(path: string, opts: OpenOptions = {}): Promise<Qcow2Image> {
		const rw = !opts.readOnly;
		const p = await openParts(path, rw);
		const { h, file } = p;
		let backing: Backing | undefined;
		try {
			if (rw) {
				if (h.incompat & Incompat.corrupt) {
					throw bad(path, "image is marked corrupt: open it read-only, or repair it with 'dmu check -r all' / 'qemu-img check -r all'");
				}
				if (h.nbSnapshots > 0 && !opts.force) {
					throw bad(path, `image has ${h.nbSnapshots} internal snapshot(s): open it read-only, or read-write with force`);
				}
				// A last cluster cut short by the end of the file becomes whole.
				await file.growTo(Math.ceil(file.size / h.clusterSize) * h.clusterSize);
				await p.refs.load();
				let headerChanged = false;
				if (h.autoclear !== 0n) {
					// We do not maintain bitmaps: clearing the bit tells QEMU they are stale.
					h.autoclear = 0n;
					headerChanged = true;
				}
				if (h.incompat & Incompat.dirty) {
					const fixed = await repairRefcounts(p, false);
					opts.log?.warn({ image: path, changes: fixed.length }, 'qcow2: dirty image, refcounts rebuilt');
					await Qcow2Image.#flushParts(p);
					h.incompat &= ~Incompat.dirty;
					headerChanged = true;
				}
				if (headerChanged) await writeHeaderFields(file, h);
			}
			backing = await Backing.open(path, h.backingFile, h.backingFormat, opts, 1);
		} catch (e) {
			await file.close();
			throw e;
		}
		return new Qcow2Image(p, rw, backing, opts);
	}

	/** Refcounts, then L2/L1, then deferred frees, each step synced (see Refcounts). */
	static async #flushParts(p: OpenedParts): Promise<void> {
		const moved = await p.refs.writeBack();
		if (moved) {
			p.h.refcountTableOffset = moved.offset;
			p.h.refcountTableClusters = moved.clusters;
			await writeHeaderFields(p.file, p.h);
			p.refs.tableMoved();
		}
		await p.tables.writeBack();
		await p.refs.applyFrees();
		await p.refs.writeBack();
	}

	#serial<T>(fn: () => Promise<T>): Promise<T> {
		const run = this.#lock.then(fn, fn);
		this.#lock = run.catch(() => undefined);
		return run;
	}

	map(req: MapRequest): Promise<MapDecision> {
		return this.#serial(async () => {
			try {
				return await this.#map(req);
			} catch (e) {
				if (e instanceof DmuError && e.code === 'DMU_ERR_BAD_IMAGE') {
					// Corrupt metadata fails the I/O, not the daemon; like QEMU, a
					// writable image is marked corrupt and takes no more writes.
					this.#log?.error({ block: String(req.block), err: e.message }, 'qcow2: corrupt metadata');
					await this.#markCorrupt();
					return { kind: 'error', errno: EIO };
				}
				throw e;
			}
		});
	}

	async #markCorrupt(): Promise<void> {
		if (!this.#rw || this.#corrupt || this.#h.version !== 3) {
			this.#corrupt = true;
			return;
		}
		this.#corrupt = true;
		this.#h.incompat |= Incompat.corrupt;
		await writeHeaderFields(this.#p.file, this.#h).catch(() => undefined);
	}

	/** Look up guest cluster `b`. */
	async #lookup(b: number): Promise<{ cl: Cluster; l1i: number; l2i: number }> {
		const h = this.#h;
		const l1i = Math.floor(b / h.l2Entries);
		const l2i = b % h.l2Entries;
		const off = this.#p.tables.l2Offset(l1i);
		if (!off) return { cl: { kind: 'unallocated', host: 0 }, l1i, l2i };
		const t = await this.#p.tables.l2(off);
		return { cl: this.#classify(t, l2i), l1i, l2i };
	}

	#classify(t: Buffer, l2i: number): Cluster {
		const h = this.#h;
		const e = t.readBigUInt64BE(l2i * h.l2EntrySize);
		if (e & COMPRESSED) return { kind: 'compressed', entry: e };
		const host = Number(e & OFFSET_MASK);
		if (host) this.#checkHost(host);
		if (h.extendedL2) {
			const bm = t.readBigUInt64BE(l2i * h.l2EntrySize + 8);
			const alloc = Number(bm & ALL_SUBCLUSTERS);
			const zeros = Number(bm >> 32n);
			if (alloc & zeros) throw bad(this.#p.file.path, `subcluster both allocated and zero (cluster entry ${l2i})`);
			if (alloc !== 0 && !host) throw bad(this.#p.file.path, `allocated subclusters without a host cluster (entry ${l2i})`);
			if (alloc === 0xffffffff) return { kind: 'data', host, copied: (e & COPIED) !== 0n };
			if (zeros === 0xffffffff) return { kind: 'zero', host };
			if (alloc === 0 && zeros === 0) return { kind: 'unallocated', host };
			return { kind: 'partial', host, alloc, zeros };
		}
		if (h.version === 3 && e & ZERO_FLAG) return { kind: 'zero', host };
		if (!host) return { kind: 'unallocated', host: 0 };
		return { kind: 'data', host, copied: (e & COPIED) !== 0n };
	}

	#checkHost(host: number): void {
		const cs = this.#h.clusterSize;
		if (host % cs !== 0 || host + cs > Math.ceil(this.#p.file.size / cs) * cs) {
			throw bad(this.#p.file.path, `data cluster at ${host} is unaligned or lies beyond the end of the file`);
		}
	}

	async #map(req: MapRequest): Promise<MapDecision> {
		const h = this.#h;
		const cs = h.clusterSize;
		if (req.block < 0n || req.block * BigInt(cs) >= this.virtualSize) return { kind: 'error', errno: EIO };
		const b = Number(req.block);
		const { cl, l1i, l2i } = await this.#lookup(b);
		if (!req.write) return this.#read(b, cl);
		if (!this.#rw) return { kind: 'error', errno: 30 }; // EROFS
		if (this.#corrupt) return { kind: 'error', errno: EIO };

		// A data cluster we own alone is written in place.
		if (cl.kind === 'data') {
			const rc = await this.#p.refs.get(cl.host / cs);
			if (rc === 0) throw bad(this.#p.file.path, `data cluster at ${cl.host} has refcount 0`);
			if (rc === 1) {
				const { table, off } = await this.#l2ForWrite(l1i);
				const e = table.readBigUInt64BE(l2i * h.l2EntrySize);
				if (!(e & COPIED)) {
					table.writeBigUInt64BE(e | COPIED, l2i * h.l2EntrySize);
					this.#p.tables.markL2(off);
				}
				return { kind: 'map', dev: 0, sector: BigInt(cl.host / 512), writable: true, ...(e & COPIED ? { durable: true } : {}) };
			}
		}

		// Anything else gets a new cluster, filled first from where its data is now.
		let copyFrom: { dev: number; sector: bigint } | undefined;
		if (!req.wholeBlock) {
			if (cl.kind === 'data') copyFrom = { dev: 0, sector: BigInt(cl.host / 512) };
			else if (cl.kind === 'unallocated' && this.#backing) {
				const d = await this.#backing.decide(b, cs);
				if (d.kind === 'error') return d;
				if (d.kind === 'map') copyFrom = { dev: d.dev, sector: d.sector };
			} else if (cl.kind === 'compressed' || cl.kind === 'partial') {
				const d = await this.#materialise(b, cl);
				copyFrom = { dev: d.dev, sector: d.sector };
			}
		}
		const { table, off: l2off } = await this.#l2ForWrite(l1i);
		const fresh = await this.#p.refs.alloc();
		const pos = l2i * h.l2EntrySize;
		table.writeBigUInt64BE(BigInt(fresh) | COPIED, pos);
		if (h.extendedL2) table.writeBigUInt64BE(ALL_SUBCLUSTERS, pos + 8);
		this.#p.tables.markL2(l2off);
		// The old place loses this reference once the new L2 entry is durable.
		if (cl.kind === 'compressed') {
			const r = compressedRef(cl.entry, h.clusterBits);
			const first = Math.floor(r.sectorStart / cs);
			const last = Math.floor((r.sectorStart + r.sectorBytes - 1) / cs);
			for (let c = first; c <= last; c++) this.#p.refs.deferFree(c);
		} else if (cl.host) {
			this.#p.refs.deferFree(cl.host / cs);
		}
		this.#scratchOf.delete(b);
		return { kind: 'map', dev: 0, sector: BigInt(fresh / 512), writable: true, ...(copyFrom ? { copyFrom } : {}) };
	}

	/**
	 * Writable places for guest clusters [first, first + count) that the
	 * caller then writes whole (every byte the guest can see; no copy-first
	 * is done): `dmu convert`'s path into a new image. Clusters that name
	 * nothing get new clusters a run at a time (Refcounts.allocRun, the L2
	 * entries set in memory; commit writes both once), instead of a map()
	 * each; any other cluster takes the map() path. Returns the runs in
	 * guest order, neighbours on the file merged.
	 */
	allocateRuns(first: number, count: number): Promise<ClusterRun[]> {
		return this.#serial(async () => {
			const h = this.#h;
			if (first < 0 || count < 0 || (first + count) * h.clusterSize >= h.virtualSize + h.clusterSize) {
				throw new DmuError('DMU_ERR_RANGE', `qcow2: clusters ${first}+${count} are outside the disk`);
			}
			if (!this.#rw) throw new DmuError('DMU_ERR_READ_ONLY', `qcow2: ${this.#p.file.path} is open read-only`);
			if (this.#corrupt) throw new DmuError('DMU_ERR_CORRUPT', `qcow2: ${this.#p.file.path}: image found corrupt, no more writes`);
			const runs: ClusterRun[] = [];
			const add = (block: number, host: number, n: number) => {
				const last = runs[runs.length - 1];
				if (last && last.block + last.count === block && last.host + last.count * h.clusterSize === host) last.count += n;
				else runs.push({ block, host, count: n });
			};
			try {
				for (let b = first; b < first + count; ) {
					const l1i = Math.floor(b / h.l2Entries);
					const stop = Math.min(first + count, (l1i + 1) * h.l2Entries);
					b = await this.#allocateInTable(l1i, b, stop, add);
				}
			} catch (e) {
				if (e instanceof DmuError && e.code === 'DMU_ERR_BAD_IMAGE') await this.#markCorrupt();
				throw e;
			}
			return runs;
		});
	}

	/** allocateRuns() within the L2 table of `l1i`, for clusters [from, stop); returns where it stopped. */
	async #allocateInTable(l1i: number, from: number, stop: number, add: (block: number, host: number, n: number) => void): Promise<number> {
		const h = this.#h;
		const base = l1i * h.l2Entries;
		let b = from;
		while (b < stop) {
			// Fetched again after a map(): it may have evicted and reloaded this table.
			const { table, off } = await this.#l2ForWrite(l1i);
			if (!isEmptyEntry(table, h, b - base)) {
				const d = await this.#map({ block: BigInt(b), write: true, wholeBlock: true, roFault: false });
				if (d.kind !== 'map') throw new DmuError('DMU_ERR_IO', `qcow2: ${this.#p.file.path}: cluster ${b} cannot be written`);
				add(b, Number(d.sector) * 512, 1);
				b++;
				continue;
			}
			let end = b + 1;
			while (end < stop && isEmptyEntry(table, h, end - base)) end++;
			// Dirty before anything can evict it (allocRun may read refcount blocks, not tables; still).
			this.#p.tables.markL2(off);
			while (b < end) {
				const run = await this.#p.refs.allocRun(end - b);
				for (let i = 0; i < run.count; i++) setDataEntry(table, h, b - base + i, run.off + i * h.clusterSize);
				add(b, run.off, run.count);
				b += run.count;
			}
		}
		return b;
	}

	async #read(b: number, cl: Cluster): Promise<MapDecision> {
		const cs = this.#h.clusterSize;
		switch (cl.kind) {
			case 'data': {
				if (cl.host + cs > this.#p.file.size) return this.#materialise(b, cl); // last cluster cut short (read-only)
				let writable = false;
				if (this.#rw && cl.copied) writable = (await this.#p.refs.get(cl.host / cs)) === 1;
				return { kind: 'map', dev: 0, sector: BigInt(cl.host / 512), writable };
			}
			case 'zero':
				return { kind: 'zero' };
			case 'unallocated':
				return this.#backing ? this.#backing.decide(b, cs) : { kind: 'zero' };
			default:
				return this.#materialise(b, cl);
		}
	}

	/** Put the cluster's bytes into the scratch device: a temporary read-only mapping. */
	async #materialise(b: number, cl: Cluster): Promise<MapDecision & { kind: 'map' }> {
		const scratch = this.#opts.scratch;
		if (!scratch) throw new DmuError('DMU_ERR_NO_SCRATCH', `qcow2: ${this.#p.file.path}: cluster ${b} needs a scratch device`);
		let sector = this.#scratchOf.get(b);
		if (sector === undefined) {
			sector = await scratch.put(await this.#bytesOf(b, cl));
			this.#scratchOf.set(b, sector);
		}
		return { kind: 'map', dev: scratch.dev, sector, writable: false, temporary: true };
	}

	/** The guest-visible bytes of cluster `b`. */
	async #bytesOf(b: number, cl: Cluster): Promise<Buffer> {
		const h = this.#h;
		const cs = h.clusterSize;
		switch (cl.kind) {
			case 'zero':
				return Buffer.alloc(cs);
			case 'unallocated':
				return this.#backing ? this.#backing.readBytes(b * cs, cs) : Buffer.alloc(cs);
			case 'data':
				return this.#p.file.readPadded(cl.host, cs);
			case 'compressed':
				return readCompressed(this.#p.file, compressedRef(cl.entry, h.clusterBits), cs, h.compressionType);
			case 'partial': {
				const sub = cs / 32;
				const out = Buffer.alloc(cs);
				const own = await this.#p.file.readPadded(cl.host, cs);
				const under = this.#backing ? await this.#backing.readBytes(b * cs, cs) : undefined;
				for (let i = 0; i < 32; i++) {
					const src = cl.alloc & (1 << i) ? own : cl.zeros & (1 << i) ? undefined : under;
					src?.copy(out, i * sub, i * sub, (i + 1) * sub);
				}
				return out;
			}
		}
	}

	/** The L2 table for L1 index `l1i`, created or unshared (COW from a snapshot) as needed. */
	async #l2ForWrite(l1i: number): Promise<{ table: Buffer; off: number }> {
		const { tables, refs } = this.#p;
		const cs = this.#h.clusterSize;
		const e = tables.l1[l1i] ?? 0n;
		const off = tables.l2Offset(l1i);
		if (!off) {
			const fresh = await refs.alloc();
			const table = Buffer.alloc(cs);
			tables.adopt(fresh, table);
			tables.setL1(l1i, BigInt(fresh) | COPIED);
			return { table, off: fresh };
		}
		const table = await tables.l2(off);
		const rc = await refs.get(off / cs);
		if (rc === 0) throw bad(this.#p.file.path, `L2 table at ${off} has refcount 0`);
		if (rc === 1) {
			if (!(e & COPIED)) tables.setL1(l1i, e | COPIED);
			return { table, off };
		}
		// Shared with a snapshot: the data clusters it names already count both.
		const fresh = await refs.alloc();
		const copy = Buffer.from(table);
		tables.adopt(fresh, copy);
		tables.setL1(l1i, BigInt(fresh) | COPIED);
		refs.deferFree(off / cs);
		return { table: copy, off: fresh };
	}

	/** Bytes of the virtual disk (used when this image is someone's backing file). */
	qcow2ReadBytes(offset: number, length: number): Promise<Buffer> {
		return this.#serial(async () => {
			const cs = this.#h.clusterSize;
			const out = Buffer.alloc(length);
			let pos = offset;
			const end = Math.min(offset + length, this.#h.virtualSize);
			while (pos < end) {
				const b = Math.floor(pos / cs);
				const inBlock = pos % cs;
				const n = Math.min(cs - inBlock, end - pos);
				const { cl } = await this.#lookup(b);
				if (cl.kind === 'unallocated' && this.#backing) {
					(await this.#backing.readBytes(pos, n)).copy(out, pos - offset);
				} else if (cl.kind === 'data') {
					(await this.#p.file.readPadded(cl.host + inBlock, n)).copy(out, pos - offset);
				} else if (cl.kind !== 'zero' && cl.kind !== 'unallocated') {
					(await this.#bytesOf(b, cl)).copy(out, pos - offset, inBlock, inBlock + n);
				}
				pos += n;
			}
			return out;
		});
	}

	commit(): Promise<void> {
		return this.#serial(async () => {
			if (!this.#rw) return;
			const pending = this.#p.refs.dirty || this.#p.tables.dirty;
			if (this.#corrupt && pending) {
				// Writing more metadata into a corrupt image could spread the damage.
				throw new DmuError('DMU_ERR_CORRUPT', `qcow2: ${this.#p.file.path}: image found corrupt, metadata not committed`);
			}
			if (this.#p.refs.dirty || this.#p.tables.dirty) await Qcow2Image.#flushParts(this.#p);
		});
	}

	async close(): Promise<void> {
		try {
			await this.commit();
		} finally {
			await this.#backing?.close();
			await this.#p.file.close();
		}
	}
}
