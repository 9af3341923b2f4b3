/**
 * Placing a chunk's blocks with one call per run of blocks, for
 * destinations that can allocate many blocks at once (qcow2's
 * allocateRuns()). BlockEngine.place() asks map() block by block: an
 * async chain, BigInts and a promise per 64 KiB cluster, which was most
 * of the CPU a conversion into qcow2 spent outside the kernel.
 */
import type { Image } from '../plugins/types.js';

/** Guest blocks [block, block + count) at consecutive places of device 0 from byte `host`. */
export interface BlockRun {
	block: number;
	host: number;
	count: number;
}

/**
 * An image that hands out writable places for runs of blocks the caller
 * then writes whole (no copy-first), all on device 0. Structural: the
 * plugin does not import dmu convert.
 */
export interface RunAllocator {
	allocateRuns(first: number, count: number): Promise<BlockRun[]>;
}

export function runAllocatorOf(image: Image): RunAllocator | undefined {
	const candidate = image as Image & Partial<RunAllocator>;
	return typeof candidate.allocateRuns === 'function' ? (candidate as Image & RunAllocator) : undefined;
}

/** Where byte range [s, e) of a chunk at disk byte `chunkOff` goes: data[from, from + len) at `pos` of device 0. */
export interface DevicePiece {
	pos: number;
	from: number;
	len: number;
}

/**
 * Map chunk bytes [s, e) (block-aligned start; the end is a block end or
 * the end of the disk) through `alloc`, in guest order.
 */
export async function placeRange(alloc: RunAllocator, blockSize: number, chunkOff: number, s: number, e: number): Promise<DevicePiece[]> {
	const first = (chunkOff + s) / blockSize;
	const count = Math.ceil((e - s) / blockSize);
	const out: DevicePiece[] = [];
	for (const r of await alloc.allocateRuns(first, count)) {
		const from = s + (r.block - first) * blockSize;
		out.push({ pos: r.host, from, len: Math.min(r.count * blockSize, e - from) });
	}
	return out;
}
