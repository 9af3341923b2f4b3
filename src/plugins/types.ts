/**
 * The format-plugin API. A plugin knows one image format and nothing about
 * the control device; cowd knows the control device and nothing about
 * formats. They meet here: cowd asks an opened Image where a block lives and
 * relays the MapDecision to the kernel.
 *
 * Rules every plugin follows:
 *  - Device index N in a decision means image.devices[N]; cowd builds the dm
 *    table in that order (files become loop devices). A scratch device, when
 *    the image asked for one, is appended after them (OpenOptions.scratch).
 *  - Sectors are 512-byte units from the start of that device. A mapping
 *    always covers one whole block (image.blockSize bytes) and must lie
 *    inside the device.
 *  - map() may allocate (write metadata in memory or on disk) but the
 *    metadata only has to be durable after commit() resolves.
 *  - With Feature.COW the kernel may allocate too: a `cow` answer names
 *    where a block goes, and its first write puts it there and calls
 *    allocated(); from then on it is the image's like a map() allocation.
 *  - Errors meant for the user are thrown as DmuError (src/errors.ts) with
 *    one clear line; anything else is a bug.
 */
import type { Logger } from 'pino';

/** What the kernel asked about one block (see DMU_MSG_MAP). */
export interface MapRequest {
	/** Virtual block number (block = byte offset / image.blockSize). */
	block: bigint;
	/** The bio is a write. */
	write: boolean;
	/** The write covers the whole block: copying old data first is useless. */
	wholeBlock: boolean;
	/** The block had a read-only mapping and a write hit it. */
	roFault: boolean;
	/**
	 * Most blocks the answer may cover (MapDecision.run); absent or 1: this
	 * block only (a kernel without Feature.MAP_RUN).
	 */
	maxRun?: number;
	/**
	 * The kernel takes copy-on-write answers (MapDecision.cow): set by cowd
	 * only when the kernel has Feature.COW and the image is writable and
	 * implements allocated(). Absent: never answer with `cow`.
	 */
	cow?: boolean;
}

/** Where the block lives, as the kernel will remember it. */
export type MapDecision =
	| {
			kind: 'map';
			dev: number;
			sector: bigint;
			/** Writes may use this mapping; otherwise a write faults back. */
			writable: boolean;
			/** Copy one block from here to (dev, sector) before any I/O. */
			copyFrom?: { dev: number; sector: bigint };
			/** Serve the waiting bios only; ask again next time. */
			temporary?: boolean;
			/** Metadata for this mapping is already durable (no commit for FUA). */
			durable?: boolean;
			/**
			 * The answer also holds for the next run - 1 blocks, each one
			 * block further on `dev` (at most MapRequest.maxRun; not with
			 * copyFrom or temporary). Only for blocks whose answer cannot
			 * change unless the kernel asks about them: a block being
			 * allocated, or allocated before, must not be in a run that
			 * says otherwise. Saves a round trip per block on first reads.
			 * With `cow`, block + i reads at sector + i * blockSectors and is
			 * allocated at cow.sector + i * blockSectors.
			 */
			run?: number;
			/**
			 * Copy on write, done by the kernel (only when MapRequest.cow):
			 * reads use (dev, sector), read-only, until the first write;
			 * that write makes the kernel allocate the block at (cow.dev,
			 * cow.sector), copying (dev, sector) into it unless the write
			 * covers the whole block, and report it with Image.allocated().
			 * Nothing is allocated by the answer itself: the image must not
			 * record the block until allocated() says so. Give it with
			 * writable false, and without copyFrom or temporary. Saves the
			 * round trip of the first write, which dm-snapshot never pays.
			 */
			cow?: { dev: number; sector: bigint };
	  }
	/** Reads return zeros; never writable (a write faults back). */
	| { kind: 'zero'; temporary?: boolean; run?: number }
	/** Fail the waiting bios with this positive errno. */
	| { kind: 'error'; errno: number };

export interface ImageDevice {
	/** A regular file or a block device. */
	path: string;
	/** Opened read-write (the image itself) or read-only (a base, a backing file). */
	writable: boolean;
}

/** A device cowd provides for data that cannot be exposed in place. */
export interface ScratchArea {
	/** Device index of the scratch device (always image.devices.length). */
	readonly dev: number;
	/** Store one block of data; resolves to its start sector on the scratch device. */
	put(data: Buffer): Promise<bigint>;
}

export interface Capabilities {
	/** The image accepts writes. */
	write: boolean;
	/** commit() does something (metadata to make durable). */
	flush: boolean;
	/** The image may ask for a scratch device (compressed or partial blocks). */
	scratch: boolean;
	/**
	 * Every block maps, as data, to device 0 at its own offset (raw): a
	 * reader may read any range of the disk straight from that device
	 * without asking map() block by block.
	 */
	linear?: boolean;
	/**
	 * map() may run for several blocks at once. The kernel never asks about
	 * one block twice at a time, so this holds when placing a new block
	 * touches no state shared with other blocks (dscow: fixed offsets; raw).
	 * Without it cowd answers a batch one request after another.
	 */
	concurrentMap?: boolean;
}

export interface Image {
	readonly format: string;
	/** Virtual disk size in bytes. */
	readonly virtualSize: bigint;
	/** Block (cluster, grain) size in bytes: a power of two, 512 B .. 8 MiB. */
	readonly blockSize: number;
	/** Devices decisions may point to, in dm-table order. */
	readonly devices: readonly ImageDevice[];
	readonly capabilities: Capabilities;
	map(req: MapRequest): Promise<MapDecision>;
	/**
	 * Make metadata for mappings handed out so far durable. With `covered`,
	 * only for the blocks it returns true for: the kernel's flush before a
	 * commit covers the data of some allocations and not of others (their
	 * copy-first may still be running), and a block's metadata must not
	 * reach the disk before its data. A format that cannot commit block by
	 * block may commit everything (dscow honours `covered`; the others,
	 * whose metadata is written as they allocate, do not).
	 */
	commit(covered?: (block: bigint) => boolean): Promise<void>;
	/** Commit, mark the image cleanly closed, release files. */
	close(): Promise<void>;
	/**
	 * Optional: the kernel could not do the copy-first of a mapping this
	 * image just allocated for `block` (the bios failed, nothing was
	 * remembered). Undo the allocation so the block does not claim data it
	 * never received.
	 */
	copyFailed?(block: bigint): Promise<void>;
	/**
	 * Optional, required to be offered MapRequest.cow: writes to `cow`
	 * answers made the kernel allocate `count` neighbouring blocks, block
	 * + i at (dev, sector + i * blockSize / 512), the places those answers
	 * named (a sequential first write reports one range, not one call per
	 * block). Record them as map() records an allocation (not
	 * durable until a commit() covers the block) before resolving: cowd
	 * then acknowledges it and the kernel stops re-sending it. The kernel
	 * may report an allocation again to a new daemon (the old one died
	 * before acknowledging): one the image already has is no error. Throws
	 * DmuError when a place is not where its block belongs; then none of
	 * the range is recorded.
	 */
	allocated?(block: bigint, dev: number, sector: bigint, count: number): Promise<void>;
}

export interface OpenOptions {
	readOnly?: boolean;
	/**
	 * Directories under which backing/base files named inside an image may
	 * be opened (besides the image's own directory). A guest-written header
	 * must never make the host open an arbitrary file.
	 */
	allowedRoots?: readonly string[];
	/** Base / backing file given on the command line (overrides the header). */
	base?: string;
	/** Format of `base` when given (probed otherwise). */
	baseFormat?: string;
	/** Open images with internal snapshots read-write anyway. */
	force?: boolean;
	scratch?: ScratchArea;
	log?: Logger;
	/**
	 * The disk is still attached and a new daemon takes it over (the old one
	 * died): mappings the old daemon handed out but never committed are in
	 * use by the kernel and must be kept, not forgotten. Formats that record
	 * allocations before commit (dscow's live bitmap) restore them.
	 */
	resume?: boolean;
}

export interface CreateOptions {
	/** Virtual size in bytes; defaults to the base's size when a base is given. */
	size?: bigint;
	/** Base (dscow) or backing file (qcow/qcow2/vhd/vmdk). */
	base?: string;
	baseFormat?: string;
	/** Block / cluster size in bytes. */
	blockSize?: number;
	/** Format-specific -o key=value options. */
	options?: Readonly<Record<string, string>>;
}

export interface CheckResult {
	/** Metadata errors: the image is corrupt (qemu-img check exit 2). */
	corruptions: string[];
	/** Allocated but unreferenced space (exit 3 when there is no corruption). */
	leaks: string[];
	/** Repairs made when asked to (-r). */
	repaired: string[];
}

export interface ImageInfo {
	format: string;
	virtualSize: bigint;
	blockSize: number;
	/** Bytes the image file occupies on disk. */
	actualSize: bigint;
	/** Blocks stored in this image (not in a base). */
	allocatedBlocks: bigint;
	backing?: { path: string; format?: string };
	dirty?: boolean;
	/** Format-specific extras, shown by `dmu info`. */
	details: Record<string, string | number | boolean>;
}

export interface Plugin {
	readonly name: string;
	/** Recognise the format from the first 4 KiB of a file (and its path). */
	probe(header: Buffer, path: string): boolean;
	create(path: string, opts: CreateOptions): Promise<void>;
	open(path: string, opts?: OpenOptions): Promise<Image>;
	check(path: string, opts?: { repair?: 'leaks' | 'all' } & OpenOptions): Promise<CheckResult>;
	info(path: string, opts?: OpenOptions): Promise<ImageInfo>;
}
