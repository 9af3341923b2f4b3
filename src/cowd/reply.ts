/**
 * A plugin's MapDecision as the kernel's MAP_REPLY (pure; tested alone).
 */
import { MapFlag } from '../abi/constants.js';
import { type MapReplyMsg, mapReply } from '../abi/messages.js';
import type { MapDecision } from '../plugins/types.js';

export function toReply(id: bigint, block: bigint, d: MapDecision): MapReplyMsg {
	switch (d.kind) {
		case 'error':
			return mapReply({ id, block, flags: MapFlag.ERROR, error: d.errno });
		case 'zero':
			return mapReply({ id, block, flags: MapFlag.ZERO | (d.temporary ? MapFlag.TEMPORARY : 0) });
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
			});
		}
	}
}
