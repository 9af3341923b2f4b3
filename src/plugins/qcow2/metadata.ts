/**
 * Opening an image's metadata (header, L1, refcount table) for any use, and
 * the repairs QEMU makes: refcounts rebuilt from the references the tables
 * hold, "copied" flags made true. Used by open (dirty bit), check and info.
 */
import { hasZstd } from './compressed.js';
import { ImageFile } from './file.js';
import { bad, COMPRESSED, COPIED, type Header, HeaderField, OFFSET_MASK, parseHeader, peekClusterBits } from './layout.js';
import { Refcounts } from './refcount.js';
import { Tables } from './tables.js';
import { collectReferences } from './walk.js';

export interface OpenedParts {
	file: ImageFile;
	h: Header;
	tables: Tables;
	refs: Refcounts;
}

/** Read and validate the header and tables of `path` (shared by open, check and info). */
export async function openParts(path: string, writable: boolean, describeOnly = false): Promise<OpenedParts> {
	const file = await ImageFile.open(path, writable);
	try {
		// Cluster 0 holds the header and its extensions; most clusters are <= 64 KiB.
		const head = await file.read(0, Math.min(65536, file.size), 'header');
		const bits = peekClusterBits(path, head);
		const c0 = 2 ** bits <= head.length || head.length === file.size ? head.subarray(0, 2 ** bits) : await file.read(0, Math.min(2 ** bits, file.size), 'header cluster');
		const h = parseHeader(path, c0, file.size, describeOnly || hasZstd());
		const tables = new Tables(file, h);
		await tables.load();
		const refs = new Refcounts(file, h);
		return { file, h, tables, refs };
	} catch (e) {
		await file.close();
		throw e;
	}
}

/** Patch header fields in place and make them durable. */
export async function writeHeaderFields(file: ImageFile, h: Header): Promise<void> {
	const b = Buffer.alloc(8);
	if (h.version === 3) {
		b.writeBigUInt64BE(h.incompat);
		await file.write(HeaderField.incompat, b);
		b.writeBigUInt64BE(h.autoclear);
		await file.write(HeaderField.autoclear, b);
	}
	b.writeBigUInt64BE(BigInt(h.refcountTableOffset));
	await file.write(HeaderField.refcountTableOffset, b);
	const c = Buffer.alloc(4);
	c.writeUInt32BE(h.refcountTableClusters);
	await file.write(HeaderField.refcountTableClusters, c);
	await file.sync();
}

/**
 * Make stored refcounts equal to the references metadata holds (QEMU's
 * repair). `leaksOnly` only lowers refcounts of unreferenced clusters.
 * Returns one line per change.
 */
export async function repairRefcounts(p: OpenedParts, leaksOnly: boolean): Promise<string[]> {
	const { refs, tables, h } = p;
	const walk = await collectReferences({
		file: p.file,
		h,
		l1: tables.l1,
		l2: (off) => tables.l2(off),
		refTable: refs.table,
		refTableOffset: refs.tableOffset,
		refTableClusters: refs.tableClusters,
	});
	if (walk.errors.length) throw bad(p.file.path, `cannot repair refcounts: ${walk.errors[0]}`);
	// Every cluster either side knows about: stored refcounts and references.
	const changes: [number, number, number][] = [];
	const stored = new Set<number>();
	await refs.forEachStored((c, have) => {
		stored.add(c);
		const want = walk.refs.get(c) ?? 0;
		if (want !== have && !(leaksOnly && want !== 0)) changes.push([c, have, want]);
	});
	if (!leaksOnly) for (const [c, want] of walk.refs) if (!stored.has(c) && want !== 0) changes.push([c, 0, want]);
	const done: string[] = [];
	for (const [c, have, want] of changes) {
		await refs.set(c, want);
		done.push(`cluster ${c}: refcount ${have} -> ${want}`);
	}
	if (!leaksOnly) done.push(...(await fixCopiedFlags(p)));
	return done;
}

/** Bit 63 of active L1/L2 entries must say "refcount is exactly one". */
export async function fixCopiedFlags(p: OpenedParts, report = false): Promise<string[]> {
	const { tables, refs, h } = p;
	const cs = h.clusterSize;
	const out: string[] = [];
	for (let i = 0; i < tables.l1.length; i++) {
		const e = tables.l1[i] ?? 0n;
		const off = Number(e & OFFSET_MASK);
		if (!off) continue;
		const one = (await refs.get(off / cs)) === 1;
		if (one !== ((e & COPIED) !== 0n)) {
			out.push(`OFLAG_COPIED L2 table at ${off} (refcount ${one ? 1 : 'not 1'})`);
			if (!report) tables.setL1(i, one ? e | COPIED : e & ~COPIED);
		}
		if (off % cs !== 0 || off + cs > p.file.size) continue;
		const t = await tables.l2(off);
		let changed = false;
		for (let j = 0; j < h.l2Entries; j++) {
			const pos = j * h.l2EntrySize;
			const le = t.readBigUInt64BE(pos);
			const host = Number(le & OFFSET_MASK);
			if (le & COMPRESSED || !host) continue;
			const one1 = (await refs.get(host / cs)) === 1;
			if (one1 !== ((le & COPIED) !== 0n)) {
				out.push(`OFLAG_COPIED data cluster at ${host}`);
				if (!report) {
					t.writeBigUInt64BE(one1 ? le | COPIED : le & ~COPIED, pos);
					changed = true;
				}
			}
		}
		if (changed) tables.markL2(off);
	}
	return out;
}

