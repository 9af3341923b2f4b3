/**
 * Constants and wire layout of the dm-userspace ABI, mirrored from
 * kernel/include/uapi/linux/dm-userspace.h (the single source of truth).
 * test/unit/abi-golden.test.ts checks every size and offset here against
 * offsetof() output of a C program built from that header, so a change on
 * either side that is not made on the other fails the tests.
 *
 * The ABI uses the machine's byte order (plain __u32/__u64 fields); every
 * Linux target dmu runs on is little-endian, and the codec says so.
 */

/** Longest target key (/dev/dmu/<key>), bytes. */
export const DMU_KEY_MAX = 48;
/** Most devices one table may list (indices 0..15). */
export const DMU_MAX_DEVS = 16;
/** Every message, both directions, is exactly this many bytes. */
export const DMU_MSG_SIZE = 64;
/** type + flags + id, before the payload union. */
export const DMU_HEADER_SIZE = 16;
/** The payload union (__u8 payload[48]). */
export const DMU_PAYLOAD_SIZE = 48;

/**
 * Feature bits, reported in struct dmu_features.features (u64, so bigint).
 * A daemon ignores bits it does not know and never uses a feature whose
 * bit is clear.
 */
export const Feature = {
	/** Map replies may carry MapFlag.COPY_FIRST (dm-kcopyd copy before any bio). */
	COPY_FIRST: 1n << 0n,
	/** MapFlag.TEMPORARY answers a request without remembering the mapping. */
	TEMPORARY: 1n << 1n,
	/** MapFlag.ZERO: reads return zeros, no device involved. */
	ZERO: 1n << 2n,
	/** MapFlag.ERROR fails the bios with a given errno. */
	ERROR: 1n << 3n,
	/** MsgType.INVALIDATE forgets mappings in a range. */
	INVALIDATE: 1n << 4n,
	/** REQ_PREFLUSH and FUA writes to uncommitted mappings produce COMMIT requests. */
	COMMIT: 1n << 5n,
	/** A failed copy-first is reported with MsgType.COPY_ERROR. */
	COPY_ERROR: 1n << 6n,
	/**
	 * Accepted MAP_REPLY messages are numbered (FEATURES.replySeq is the
	 * last number given out) and COMMIT.coveredSeq says which prefix of
	 * them the kernel's device flush covers.
	 */
	COMMIT_SEQ: 1n << 7n,
	/**
	 * A MAP_REPLY may answer for a run of blocks (MapReplyMsg.run, at most
	 * FEATURES.maxRun): block + i at sector + i * blockSectors, same flags.
	 */
	MAP_RUN: 1n << 8n,
	/**
	 * A MAP_REPLY may carry MapFlag.COW: reads use (srcDev, srcSector)
	 * until the first write, which the kernel turns into an allocation at
	 * (dev, sector) itself and reports with MsgType.ALLOCATED (numbered
	 * apart from replies; COMMIT.coveredAlloc covers a prefix of them).
	 */
	COW: 1n << 9n,
} as const;
export type FeatureName = keyof typeof Feature;

/**
 * Message types (enum dmu_msg_type). Below 0x80: kernel -> daemon (read()),
 * from 0x80: daemon -> kernel (write()).
 */
export const MsgType = {
	/** payload: struct dmu_features. Id 0 is the first message after every open. */
	FEATURES: 0x01,
	/** payload: struct dmu_map_request: "where does this block live?" */
	MAP: 0x02,
	/** payload: struct dmu_commit. Data devices are flushed; make metadata of replies up to coveredSeq durable. */
	COMMIT: 0x03,
	/** payload: struct dmu_invalidate, same id and range as the INVALIDATE. */
	INVALIDATE_DONE: 0x04,
	/** payload: struct dmu_copy_error: a copy-first for reply <id> failed. */
	COPY_ERROR: 0x05,
	/** payload: struct dmu_allocated: COW mappings' first writes allocated `count` neighbouring blocks. Answer ALLOCATED_ACK. */
	ALLOCATED: 0x06,
	/** payload: none. Asks for a FEATURES message with the same id. */
	GET_FEATURES: 0x81,
	/** payload: struct dmu_map_reply, id of the MAP request. */
	MAP_REPLY: 0x82,
	/** payload: struct dmu_commit_done, id of the COMMIT request. */
	COMMIT_DONE: 0x83,
	/** payload: struct dmu_invalidate: forget mappings of [block, block+count). */
	INVALIDATE: 0x84,
	/** payload: none, id of the ALLOCATED: the allocation is recorded. */
	ALLOCATED_ACK: 0x85,
} as const;
export type MsgTypeName = keyof typeof MsgType;
export type MsgTypeValue = (typeof MsgType)[MsgTypeName];

/** Types at or above this value travel daemon -> kernel. */
export const DMU_MSG_TO_KERNEL = 0x80;

/** Name of a type value, for logs and errors ("MAP_REPLY", or undefined). */
const TYPE_NAMES = new Map<number, MsgTypeName>(Object.entries(MsgType).map(([name, value]) => [value, name as MsgTypeName]));

export function msgTypeName(type: number): MsgTypeName | undefined {
	return TYPE_NAMES.get(type);
}

/** MAP request flags (struct dmu_msg.flags of a MsgType.MAP). */
export const ReqFlag = {
	/** The bio that caused the request is a write. */
	WRITE: 1 << 0,
	/** That write covers the whole block, so copy-first may be skipped. */
	WHOLE_BLOCK: 1 << 1,
	/** The block had a read-only mapping and a write hit it. */
	RO_FAULT: 1 << 2,
} as const;

/** MAP_REPLY flags (struct dmu_msg.flags of a MsgType.MAP_REPLY). */
export const MapFlag = {
	/** Writes may use the mapping; without it a write faults back (RO_FAULT). */
	WRITABLE: 1 << 0,
	/** Copy one block (src_dev, src_sector) -> (dev, sector) before any bio. */
	COPY_FIRST: 1 << 1,
	/** Serve the waiting bios, do not remember the mapping. */
	TEMPORARY: 1 << 2,
	/** Reads return zeros; dev/sector ignored; never writable. */
	ZERO: 1 << 3,
	/** Fail the waiting bios with -error; nothing is remembered. */
	ERROR: 1 << 4,
	/** Metadata for this mapping is already durable: FUA need not wait for a commit. */
	DURABLE: 1 << 5,
	/** Reads use (srcDev, srcSector); the first write allocates (dev, sector) in the kernel (Feature.COW). */
	COW: 1 << 6,
} as const;
/** Every MAP_REPLY flag the header defines (DMU_MAP_FLAGS_ALL). */
export const DMU_MAP_FLAGS_ALL = 0x7f;

/** Wire type of one field. Reserved bytes must be zero. */
export type FieldKind = 'u32' | 's32' | 'u64' | 'reserved';

export interface FieldSpec {
	/** Property name in the TypeScript message (reserved: the C name). */
	readonly name: string;
	/** Member name in the C struct, for the golden offsetof check. */
	readonly c: string;
	/** Offset inside the C struct (payload structs start at DMU_HEADER_SIZE). */
	readonly offset: number;
	readonly kind: FieldKind;
	readonly size: number;
}

export interface StructSpec {
	/** C struct name. */
	readonly struct: string;
	/** Member of the union in struct dmu_msg holding it ("" for dmu_msg itself). */
	readonly member: string;
	readonly size: number;
	readonly fields: readonly FieldSpec[];
}

const u32 = (name: string, offset: number, c = name): FieldSpec => ({ name, c, offset, kind: 'u32', size: 4 });
const s32 = (name: string, offset: number, c = name): FieldSpec => ({ name, c, offset, kind: 's32', size: 4 });
const u64 = (name: string, offset: number, c = name): FieldSpec => ({ name, c, offset, kind: 'u64', size: 8 });
const rsv = (c: string, offset: number, size: number): FieldSpec => ({ name: c, c, offset, kind: 'reserved', size });

/** struct dmu_msg: the 16-byte header in front of the payload union. */
export const MsgHeader: StructSpec = {
	struct: 'dmu_msg',
	member: '',
	size: DMU_MSG_SIZE,
	fields: [u32('type', 0), u32('flags', 4), u64('id', 8), rsv('payload', 16, DMU_PAYLOAD_SIZE)],
};

/** Payload structs, keyed by their union member name in struct dmu_msg. */
export const Payload = {
	/** struct dmu_features: what the kernel offers (FEATURES). */
	features: {
		struct: 'dmu_features',
		member: 'features',
		size: 48,
		fields: [
			u64('features', 0),
			u64('nrBlocks', 8, 'nr_blocks'),
			u32('blockSectors', 16, 'block_sectors'),
			u32('nrDevs', 20, 'nr_devs'),
			u32('maxBatch', 24, 'max_batch'),
			u32('maxRun', 28, 'max_run'),
			u64('replySeq', 32, 'reply_seq'),
			u64('allocSeq', 40, 'alloc_seq'),
		],
	},
	/** struct dmu_map_request (MAP). */
	map: {
		struct: 'dmu_map_request',
		member: 'map',
		size: 48,
		fields: [u64('block', 0), rsv('reserved', 8, 40)],
	},
	/** struct dmu_map_reply (MAP_REPLY); sectors are 512-byte units on the device. */
	reply: {
		struct: 'dmu_map_reply',
		member: 'reply',
		size: 48,
		fields: [
			u64('block', 0),
			u64('sector', 8),
			u64('srcSector', 16, 'src_sector'),
			u32('dev', 24),
			u32('srcDev', 28, 'src_dev'),
			s32('error', 32),
			u32('run', 36),
			rsv('reserved1', 40, 8),
		],
	},
	/** struct dmu_commit (COMMIT). */
	commitReq: {
		struct: 'dmu_commit',
		member: 'commit_req',
		size: 48,
		fields: [u64('coveredSeq', 0, 'covered_seq'), u64('coveredAlloc', 8, 'covered_alloc'), rsv('reserved', 16, 32)],
	},
	/** struct dmu_commit_done (COMMIT_DONE). */
	commit: {
		struct: 'dmu_commit_done',
		member: 'commit',
		size: 48,
		fields: [s32('error', 0), rsv('reserved0', 4, 4), rsv('reserved', 8, 40)],
	},
	/** struct dmu_invalidate (INVALIDATE and INVALIDATE_DONE). */
	invalidate: {
		struct: 'dmu_invalidate',
		member: 'invalidate',
		size: 48,
		fields: [
			u64('block', 0),
			u64('count', 8),
			s32('error', 16),
			rsv('reserved0', 20, 4),
			rsv('reserved', 24, 24),
		],
	},
	/** struct dmu_copy_error (COPY_ERROR). */
	copyError: {
		struct: 'dmu_copy_error',
		member: 'copy_error',
		size: 48,
		fields: [u64('block', 0), s32('error', 8), rsv('reserved0', 12, 4), rsv('reserved', 16, 32)],
	},
	/** struct dmu_allocated (ALLOCATED). */
	allocated: {
		struct: 'dmu_allocated',
		member: 'allocated',
		size: 48,
		fields: [
			u64('block', 0),
			u64('sector', 8),
			u64('allocSeq', 16, 'alloc_seq'),
			u32('dev', 24),
			u32('count', 28),
			rsv('reserved', 32, 16),
		],
	},
} as const satisfies Record<string, StructSpec>;
export type PayloadName = keyof typeof Payload;

/** Which payload struct each message type carries (null: none, all 48 bytes reserved). */
export const PayloadOf: Readonly<Record<MsgTypeValue, PayloadName | null>> = {
	[MsgType.FEATURES]: 'features',
	[MsgType.MAP]: 'map',
	[MsgType.COMMIT]: 'commitReq',
	[MsgType.INVALIDATE_DONE]: 'invalidate',
	[MsgType.COPY_ERROR]: 'copyError',
	[MsgType.ALLOCATED]: 'allocated',
	[MsgType.GET_FEATURES]: null,
	[MsgType.MAP_REPLY]: 'reply',
	[MsgType.COMMIT_DONE]: 'commit',
	[MsgType.INVALIDATE]: 'invalidate',
	[MsgType.ALLOCATED_ACK]: null,
};
