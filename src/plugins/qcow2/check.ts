/**
 * qemu-img check, for qcow2: stored refcounts against the references the
 * metadata holds. A refcount lower than its references (or any mismatch on
 * a referenced cluster) is corruption; an unreferenced cluster with a
 * refcount is a leak. Repair: -r leaks frees leaks; -r all also rewrites
 * wrong refcounts and the "copied" flags (QEMU's rebuild).
 */
import type { CheckResult, OpenOptions } from '../types.js';
import { fixCopiedFlags, openParts, repairRefcounts, writeHeaderFields } from './metadata.js';
import { Incompat } from './layout.js';
import { collectReferences } from './walk.js';

export async function checkQcow2(path: string, opts: { repair?: 'leaks' | 'all' } & OpenOptions = {}): Promise<CheckResult> {
	const repaired: string[] = [];
	if (opts.repair) {
		const p = await openParts(path, true);
		try {
			await p.refs.load();
			repaired.push(...(await repairRefcounts(p, opts.repair === 'leaks')));
			// Same durable order as a commit: refcounts, tables, frees.
			await p.refs.writeBack().then(async (moved) => {
				if (moved) {
					p.h.refcountTableOffset = moved.offset;
					p.h.refcountTableClusters = moved.clusters;
					await writeHeaderFields(p.file, p.h);
					p.refs.tableMoved();
				}
			});
			await p.tables.writeBack();
			await p.refs.applyFrees();
			await p.refs.writeBack();
			if (opts.repair === 'all' && p.h.incompat & (Incompat.dirty | Incompat.corrupt)) {
				// Refcounts and flags now match the tables (repair refuses tables it cannot walk).
				p.h.incompat &= ~(Incompat.dirty | Incompat.corrupt);
				await writeHeaderFields(p.file, p.h);
				repaired.push('dirty/corrupt bits cleared');
			}
		} finally {
			await p.file.close();
		}
	}

	const p = await openParts(path, false);
	try {
		await p.refs.load();
		const walk = await collectReferences({
			file: p.file,
			h: p.h,
			l1: p.tables.l1,
			l2: (off) => p.tables.l2(off),
			refTable: p.refs.table,
			refTableOffset: p.refs.tableOffset,
			refTableClusters: p.refs.tableClusters,
		});
		const corruptions = [...walk.errors];
		const leaks: string[] = [];
		const seen = new Set<number>();
		const compare = (c: number, have: number): void => {
			seen.add(c);
			const want = walk.refs.get(c) ?? 0;
			if (have === want) return;
			if (want === 0) leaks.push(`Leaked cluster ${c} refcount=${have} reference=0`);
			else corruptions.push(`ERROR cluster ${c} refcount=${have} reference=${want}`);
		};
		await p.refs.forEachStored(compare);
		for (const [c, want] of walk.refs) if (!seen.has(c) && want > 0) compare(c, 0);
		if (corruptions.length === 0) corruptions.push(...(await fixCopiedFlags(p, true)).map((s) => `ERROR ${s}`));
		return { corruptions, leaks, repaired };
	} finally {
		await p.file.close();
	}
}
