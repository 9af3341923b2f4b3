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

/** Would the kernel remember `q`'s block as `r`'s run says it? */
function sameAsRun(r: MapReplyMsg, q: MapReplyMsg, blockSectors: bigint): boolean {
	if (q.flags !== r.flags || q.dev !== r.dev) return false;
	return (r.flags & MapFlag.ZERO) !== 0 || q.sector === r.sector + (q.block - r.block) * blockSectors;
}

/**
 * Cut each run in a batch before the first block that another reply of
 * the same batch answers differently. The kernel already keeps a block's
 * own answer over a run's, but only while it still remembers it; within
 * one batch that is not guaranteed, so the batch must not contradict
 * itself. Replies that agree with the run (a sequential first read asks
 * for many neighbours at once) leave it whole.
 */
export function trimRuns(replies: readonly DaemonMessage[], blockSectors: bigint): DaemonMessage[] {
	const maps = replies.filter((r): r is MapReplyMsg => r.type === MsgType.MAP_REPLY);
	if (!maps.some((r) => r.run > 1)) return [...replies];
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
		const end = r.block + BigInt(r.run);
		for (let i = firstAfter(r.block); i < byBlock.length && byBlock[i]!.block < end; i++) {
			const q = byBlock[i]!;
			if (!sameAsRun(r, q, blockSectors)) {
				const run = Number(q.block - r.block);
				return { ...r, run: run > 1 ? run : 0 };
			}
		}
		return r;
	});
}
