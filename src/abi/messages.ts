/**
 * Typed dm-userspace messages: one interface per message type, joined in a
 * union discriminated by `type`. u64 fields are bigint, u32/s32 are number.
 * Reserved fields do not appear: the codec writes them as zero and rejects
 * messages where they are not.
 */
import { MsgType } from './constants.js';

interface Header<T extends number> {
	readonly type: T;
	/** ReqFlag bits for MAP, MapFlag bits for MAP_REPLY, 0 otherwise. */
	readonly flags: number;
	/** Request id; an answer echoes the id of what it answers. */
	readonly id: bigint;
}

/* kernel -> daemon */

/** What the kernel offers; id 0 is the first message after every open. */
export interface FeaturesMsg extends Header<typeof MsgType.FEATURES> {
	/** Feature.* bits. */
	readonly features: bigint;
	/** Virtual blocks in the target. */
	readonly nrBlocks: bigint;
	/** Block size in 512-byte sectors. */
	readonly blockSectors: number;
	/** Devices in the table, index 0..nrDevs-1. */
	readonly nrDevs: number;
	/** Most messages one read() returns. */
	readonly maxBatch: number;
	/** Feature.MAP_RUN: most blocks one MAP_REPLY may answer for. */
	readonly maxRun: number;
	/** Feature.COMMIT_SEQ: number of the last MAP_REPLY the kernel accepted (0: none yet). */
	readonly replySeq: bigint;
	/** Feature.COW: number of the last allocation the kernel made itself (0: none yet). */
	readonly allocSeq: bigint;
}

/** "Where does this block live?" flags: ReqFlag.*. */
export interface MapRequestMsg extends Header<typeof MsgType.MAP> {
	readonly block: bigint;
}

/**
 * Data devices are flushed: make durable the metadata of the mappings given
 * in MAP_REPLYs numbered up to coveredSeq (Feature.COMMIT_SEQ; later ones
 * may not have their data on disk yet), answer COMMIT_DONE.
 */
export interface CommitMsg extends Header<typeof MsgType.COMMIT> {
	readonly coveredSeq: bigint;
	/** Feature.COW: the flush covers the ALLOCATED messages numbered up to this. */
	readonly coveredAlloc: bigint;
}

/** An INVALIDATE finished: no bio uses the forgotten mappings any more. */
export interface InvalidateDoneMsg extends Header<typeof MsgType.INVALIDATE_DONE> {
	readonly block: bigint;
	readonly count: bigint;
	/** 0 or a positive errno. */
	readonly error: number;
}

/** The copy-first of the reply with this id failed; bios got -EIO. */
export interface CopyErrorMsg extends Header<typeof MsgType.COPY_ERROR> {
	readonly block: bigint;
	/** Positive errno. */
	readonly error: number;
}

/**
 * Writes to MapFlag.COW mappings made the kernel allocate `count`
 * neighbouring blocks: block + i at (dev, sector + i * blockSectors),
 * allocation number allocSeq + i; writable, not durable. Record every
 * one, then ALLOCATED_ACK.
 */
export interface AllocatedMsg extends Header<typeof MsgType.ALLOCATED> {
	/** The first block. */
	readonly block: bigint;
	/** Where the first block lives now. */
	readonly sector: bigint;
	/** Number of the first block's allocation (COMMIT.coveredAlloc counts these). */
	readonly allocSeq: bigint;
	readonly dev: number;
	/** Blocks reported, at least 1. */
	readonly count: number;
}

/* daemon -> kernel */

/** Ask for a FEATURES message carrying this id. */
export interface GetFeaturesMsg extends Header<typeof MsgType.GET_FEATURES> {}

/** The answer to a MAP request; flags: MapFlag.*. */
export interface MapReplyMsg extends Header<typeof MsgType.MAP_REPLY> {
	/** Must equal the request's block. */
	readonly block: bigint;
	/** Destination start sector on `dev` (512-byte units). */
	readonly sector: bigint;
	/** Copy-first source start sector on `srcDev`. */
	readonly srcSector: bigint;
	/** Destination device index (table order). */
	readonly dev: number;
	/** Copy-first source device index. */
	readonly srcDev: number;
	/** With MapFlag.ERROR: positive errno for the waiting bios. */
	readonly error: number;
	/**
	 * Feature.MAP_RUN: the answer holds for blocks block .. block + run - 1
	 * (each one block further on `dev`); 0 or 1: this block only. Not with
	 * TEMPORARY, ERROR or COPY_FIRST.
	 */
	readonly run: number;
}

/** Metadata is durable (error 0) or the flush fails with this errno. */
export interface CommitDoneMsg extends Header<typeof MsgType.COMMIT_DONE> {
	readonly error: number;
}

/** Forget mappings of [block, block + count). */
export interface InvalidateMsg extends Header<typeof MsgType.INVALIDATE> {
	readonly block: bigint;
	readonly count: bigint;
	/** Unused in this direction: 0. */
	readonly error: number;
}

/** The ALLOCATED with this id is recorded. */
export interface AllocatedAckMsg extends Header<typeof MsgType.ALLOCATED_ACK> {}

export type KernelMessage = FeaturesMsg | MapRequestMsg | CommitMsg | InvalidateDoneMsg | CopyErrorMsg | AllocatedMsg;
export type DaemonMessage = GetFeaturesMsg | MapReplyMsg | CommitDoneMsg | InvalidateMsg | AllocatedAckMsg;
export type DmuMessage = KernelMessage | DaemonMessage;

/* Builders for the messages a daemon writes, with the optional fields zero. */

/** A map reply; unset fields are 0 (no copy source, no error). */
export function mapReply(
	m: Pick<MapReplyMsg, 'id' | 'block' | 'flags'> & Partial<Pick<MapReplyMsg, 'sector' | 'srcSector' | 'dev' | 'srcDev' | 'error' | 'run'>>,
): MapReplyMsg {
	return {
		type: MsgType.MAP_REPLY,
		id: m.id,
		flags: m.flags,
		block: m.block,
		sector: m.sector ?? 0n,
		srcSector: m.srcSector ?? 0n,
		dev: m.dev ?? 0,
		srcDev: m.srcDev ?? 0,
		error: m.error ?? 0,
		run: m.run ?? 0,
	};
}

export function commitDone(id: bigint, error = 0): CommitDoneMsg {
	return { type: MsgType.COMMIT_DONE, flags: 0, id, error };
}

export function invalidate(id: bigint, block: bigint, count: bigint): InvalidateMsg {
	return { type: MsgType.INVALIDATE, flags: 0, id, block, count, error: 0 };
}

export function allocatedAck(id: bigint): AllocatedAckMsg {
	return { type: MsgType.ALLOCATED_ACK, flags: 0, id };
}

export function getFeatures(id: bigint): GetFeaturesMsg {
	return { type: MsgType.GET_FEATURES, flags: 0, id };
}
