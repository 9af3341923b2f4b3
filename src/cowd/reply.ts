/**
 * A plugin's MapDecision as the kernel's MAP_REPLY, and the rules a batch
 * of replies follows (pure; tested alone).
 */
import { MapFlag, MsgType } from '../abi/constants.js';
import { type DaemonMessage, type MapReplyMsg, mapReply } from '../abi/messages.js';
import type { MapDecision } from '../plugins/types.js';

/** The reply's run field: 0 (one block) unless the decision covers more. */
const runOf = (d: { run?: number }): number => (d.run !== undefined && d.run > 1 ? d.run : 0);

export function toReply(id: bigint, block: bigint, d: MapDecision): MapReplyMsg {
	switch (d.kind) {
		case 'error':
			return mapReply({ id, block, flags: MapFlag.ERROR, error: d.errno });
		case 'zero':
			return mapReply({ id, block, flags: MapFlag.ZERO | (d.temporary ? MapFlag.TEMPORARY : 0), run: runOf(d) });
		case 'map': {
			if (d.cow) return cowReply(id, block, d, d.cow);
			let flags = 0;
			if (d.writable) flags |= MapFlag.WRITABLE;
			if (d.temporary) flags |= MapFlag.TEMPORARY;
			if (d.durable) flags |= MapFlag.DURABLE;
			if (d.copyFrom) flags |= MapFlag.COPY_FIRST;
			return mapReply({
				id,
				block,
				flags,
				dev: d.dev,
				sector: d.sector,
				srcDev: d.copyFrom?.dev ?? 0,
				srcSector: d.copyFrom?.sector ?? 0n,
				run: runOf(d),
			});
		}
	}
}

/**
 * A copy-on-write answer: in the header's terms the COW destination is
 * (dev, sector) and the place reads use until then is the source. The
 * mapping is neither writable nor durable until the kernel allocates it:
 * COW goes alone, whatever the decision says about the read location.
 */
function cowReply(id: bigint, block: bigint, d: { dev: number; sector: bigint; run?: number }, cow: { dev: number; sector: bigint }): MapReplyMsg {
	return mapReply({ id, block, flags: MapFlag.COW, dev: cow.dev, sector: cow.sector, srcDev: d.dev, srcSector: d.sector, run: runOf(d) });
}

/** Would the kernel remember `q`'s block as `r`'s run says it? */
function sameAsRun(r: MapReplyMsg, q: MapReplyMsg, blockSectors: bigint): boolean {
	if (q.flags !== r.flags || q.dev !== r.dev) return false;
	if ((r.flags & MapFlag.ZERO) !== 0) return true;
	const step = (q.block - r.block) * blockSectors;
	if (q.sector !== r.sector + step) return false;
	// A COW run also reads each block one block further on its source.
	return (r.flags & MapFlag.COW) === 0 || (q.srcDev === r.srcDev && q.srcSector === r.srcSector + step);
}

/**
 * Cut each run in a batch before the first block that another reply of
 * the same batch answers differently, or that the kernel allocated itself
 * (`allocated`: the ranges of the batch's ALLOCATED messages, Feature.COW;
 * a run worked out before such a message was applied may cover its
 * block). The kernel already keeps a block's own mapping over a run's,
 * but only while it still remembers it; within one batch that is not
 * guaranteed, so the batch must not contradict itself. Replies that agree
 * with the run (a sequential first read asks for many neighbours at once)
 * leave it whole.
 */
/** Blocks [block, block + count). */
export interface BlockRange {
	readonly block: bigint;
	readonly count: number;
}

export function trimRuns(replies: readonly DaemonMessage[], blockSectors: bigint, allocated: readonly BlockRange[] = []): DaemonMessage[] {
	const maps = replies.filter((r): r is MapReplyMsg => r.type === MsgType.MAP_REPLY);
	if (!maps.some((r) => r.run > 1)) return [...replies];
	const cutAt = (r: MapReplyMsg, run: number): MapReplyMsg => ({ ...r, run: run > 1 ? run : 0 });
	const byBlock = [...maps].sort((a, b) => (a.block < b.block ? -1 : a.block > b.block ? 1 : 0));
	const firstAfter = (block: bigint): number => {
		let lo = 0;
		let hi = byBlock.length;
		while (lo < hi) {
			const mid = (lo + hi) >>> 1;
			if (byBlock[mid]!.block <= block) lo = mid + 1;
			else hi = mid;
		}
		return lo;
	};
	return replies.map((r) => {
		if (r.type !== MsgType.MAP_REPLY || r.run <= 1) return r;
		let end = r.block + BigInt(r.run);
		for (const a of allocated) {
			// The range's first block after the run's own one.
			const first = a.block > r.block ? a.block : r.block + 1n;
			if (first < a.block + BigInt(a.count) && first < end) end = first;
		}
		for (let i = firstAfter(r.block); i < byBlock.length && byBlock[i]!.block < end; i++) {
			const q = byBlock[i]!;
			if (!sameAsRun(r, q, blockSectors)) return cutAt(r, Number(q.block - r.block));
		}
		return end < r.block + BigInt(r.run) ? cutAt(r, Number(end - r.block)) : r;
	});
}
