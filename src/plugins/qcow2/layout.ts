/**
 * qcow2 on-disk layout (QEMU docs/interop/qcow2.txt): the header, its
 * extensions, and the bits of L1/L2/refcount entries. Pure functions over
 * buffers; every field that names a place in the file is validated here
 * against the file size so later code can trust it.
 */
import { DmuError } from '../../errors.js';

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const HEADER_V2_LENGTH = 72;
export const HEADER_V3_LENGTH = 104;
export const MIN_CLUSTER_BITS = 9;
/** QEMU's implementation limit; images with larger clusters do not open there either. */
export const MAX_CLUSTER_BITS = 21;
/** QEMU limits: 32 MiB L1 table, 8 MiB refcount table. */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
export const MAX_SNAPSHOTS = 65536;
/** Offsets and sizes stay below 2^53 so they fit a JS number exactly. */
export const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

export const Incompat = {
	dirty: 1n << 0n,
	corrupt: 1n << 1n,
	dataFile: 1n << 2n,
	compression: 1n << 3n,
	extendedL2: 1n << 4n,
} as const;
const KNOWN_INCOMPAT = 0x1fn;
export const COMPAT_LAZY_REFCOUNTS = 1n;
export const AUTOCLEAR_BITMAPS = 1n;

export const Ext = {
	end: 0,
	backingFormat: 0xe2792aca,
	featureNames: 0x6803f857,
	bitmaps: 0x23852875,
	crypto: 0x0537be77,
	dataFile: 0x44415441,
} as const;

/** Byte offsets of header fields we patch in place. */
export const HeaderField = {
	incompat: 72,
	autoclear: 88,
	refcountTableOffset: 48,
	refcountTableClusters: 56,
} as const;

/** L1 and standard L2 entries: host offset bits 9..55. */
export const OFFSET_MASK = 0x00fffffffffffe00n;
export const COPIED = 1n << 63n;
export const COMPRESSED = 1n << 62n;
export const ZERO_FLAG = 1n;
export const ALL_SUBCLUSTERS = 0xffffffffn;

export interface Header {
	version: 2 | 3;
	clusterBits: number;
	clusterSize: number;
	virtualSize: number;
	l1Size: number;
	l1Offset: number;
	refcountTableOffset: number;
	refcountTableClusters: number;
	nbSnapshots: number;
	snapshotsOffset: number;
	incompat: bigint;
	compat: bigint;
	autoclear: bigint;
	refcountOrder: number;
	headerLength: number;
	compressionType: number;
	extendedL2: boolean;
	/** Entries per L2 table (halved with extended L2). */
	l2Entries: number;
	/** Bytes per L2 entry: 8, or 16 with extended L2. */
	l2EntrySize: number;
	backingFile?: string;
	backingFormat?: string;
	bitmaps?: { count: number; dirSize: number; dirOffset: number };
	/** Extension types we do not know (kept as they are). */
	unknownExtensions: number[];
	featureNames: Map<string, string>;
}

export const bad = (path: string, msg: string): DmuError => new DmuError('DMU_ERR_BAD_IMAGE', `qcow2: ${path}: ${msg}`);

const alignedTo = (v: number, cs: number): boolean => v % cs === 0;

/** A bigint field as a number, refused when it does not fit. */
function safe(path: string, v: bigint, what: string): number {
	if (v > MAX_SAFE) throw bad(path, `${what} ${v} is too large`);
	return Number(v);
}

/** True for a buffer that starts like any qcow2 image. */
export const isQcow2 = (buf: Buffer): boolean =>
	buf.length >= 8 && buf.readUInt32BE(0) === QCOW2_MAGIC && [2, 3].includes(buf.readUInt32BE(4));

/** Cluster bits from the first bytes, validated (needed to read cluster 0 whole). */
export function peekClusterBits(path: string, buf: Buffer): number {
	if (buf.length < HEADER_V2_LENGTH) throw bad(path, 'file too small for a qcow2 header');
	if (buf.readUInt32BE(0) !== QCOW2_MAGIC) throw bad(path, 'not a qcow2 image (bad magic)');
	const version = buf.readUInt32BE(4);
	if (version !== 2 && version !== 3) throw bad(path, `unsupported qcow2 version ${version}`);
	const bits = buf.readUInt32BE(20);
	if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
		throw bad(path, `cluster_bits ${bits} outside ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS}`);
	}
	return bits;
}

/**
 * Parse and validate the header in `c0` (cluster 0, or the whole file when
 * it is shorter). Refuses what we cannot handle safely: encryption,
 * external data files, unknown incompatible features, zstd without support.
 */
export function parseHeader(path: string, c0: Buffer, fileSize: number, zstd: boolean): Header {
	const clusterBits = peekClusterBits(path, c0);
	const cs = 2 ** clusterBits;
	const version = c0.readUInt32BE(4) as 2 | 3;
	const backingOffset = c0.readBigUInt64BE(8);
	const backingSize = c0.readUInt32BE(16);
	const virtualSize = safe(path, c0.readBigUInt64BE(24), 'virtual size');
	const cryptMethod = c0.readUInt32BE(32);
	const l1Size = c0.readUInt32BE(36);
	const l1Offset = safe(path, c0.readBigUInt64BE(40), 'L1 table offset');
	const refcountTableOffset = safe(path, c0.readBigUInt64BE(48), 'refcount table offset');
	const refcountTableClusters = c0.readUInt32BE(56);
	const nbSnapshots = c0.readUInt32BE(60);
	const snapshotsOffset = safe(path, c0.readBigUInt64BE(64), 'snapshot table offset');
	let incompat = 0n;
	let compat = 0n;
	let autoclear = 0n;
	let refcountOrder = 4;
	let headerLength = HEADER_V2_LENGTH;
	let compressionType = 0;
	if (version === 3) {
		if (c0.length < HEADER_V3_LENGTH) throw bad(path, 'file too small for a version 3 header');
		incompat = c0.readBigUInt64BE(72);
		compat = c0.readBigUInt64BE(80);
		autoclear = c0.readBigUInt64BE(88);
		refcountOrder = c0.readUInt32BE(96);
		headerLength = c0.readUInt32BE(100);
		if (headerLength < HEADER_V3_LENGTH || headerLength % 8 !== 0 || headerLength > Math.min(cs, c0.length)) {
			throw bad(path, `invalid header length ${headerLength}`);
		}
		if (headerLength > 104) compressionType = c0.readUInt8(104);
	}
	const featureNames = new Map<string, string>();
	const unknownExtensions: number[] = [];
	let backingFormat: string | undefined;
	let bitmaps: Header['bitmaps'];
	// Header extensions: a chain of (type, length, data) inside cluster 0.
	let pos = headerLength;
	const end = Math.min(cs, c0.length);
	const seen = new Set<number>();
	for (;;) {
		if (pos + 8 > end) break; // QEMU accepts a header that fills the cluster
		const type = c0.readUInt32BE(pos);
		const len = c0.readUInt32BE(pos + 4);
		if (type === Ext.end) break;
		if (pos + 8 + len > end) throw bad(path, `header extension 0x${type.toString(16)} overruns the first cluster`);
		const data = c0.subarray(pos + 8, pos + 8 + len);
		if (seen.has(type) && type !== Ext.featureNames) throw bad(path, `duplicate header extension 0x${type.toString(16)}`);
		seen.add(type);
		switch (type) {
			case Ext.backingFormat:
				backingFormat = data.toString('latin1');
				break;
			case Ext.featureNames:
				for (let i = 0; i + 48 <= len; i += 48) {
					const kind = ['incompatible', 'compatible', 'autoclear'][data[i] ?? 0] ?? 'unknown';
					const name = data.subarray(i + 2, i + 48).toString('latin1').replace(/\0.*$/s, '');
					featureNames.set(`${kind}:${data[i + 1]}`, name);
				}
				break;
			case Ext.bitmaps:
				if (len < 24) throw bad(path, 'bitmaps extension too short');
				bitmaps = {
					count: data.readUInt32BE(0),
					dirSize: safe(path, data.readBigUInt64BE(8), 'bitmap directory size'),
					dirOffset: safe(path, data.readBigUInt64BE(16), 'bitmap directory offset'),
				};
				break;
			case Ext.crypto:
				throw bad(path, 'encrypted images are not supported');
			case Ext.dataFile:
				break; // refused below through the incompatible bit
			default:
				unknownExtensions.push(type);
		}
		pos += 8 + Math.ceil(len / 8) * 8;
	}

	// Feature checks come first so a reader sees the real reason.
	const unknown = incompat & ~KNOWN_INCOMPAT;
	if (unknown) {
		const names: string[] = [];
		for (let b = 0n; b < 64n; b++) {
			if (unknown & (1n << b)) names.push(featureNames.get(`incompatible:${b}`) ?? `bit ${b}`);
		}
		throw bad(path, `unsupported incompatible features: ${names.join(', ')}`);
	}
	if (cryptMethod !== 0) throw bad(path, `encrypted images are not supported (crypt_method ${cryptMethod})`);
	if (incompat & Incompat.dataFile) throw bad(path, 'images with an external data file are not supported');
	if (incompat & Incompat.compression) {
		if (compressionType === 1 && !zstd) {
			throw bad(path, "zstd-compressed clusters need zlib.zstdDecompressSync, which this Node lacks (convert with 'qemu-img convert -o compression_type=zlib')");
		}
		if (compressionType !== 1) throw bad(path, `unknown compression type ${compressionType}`);
	} else if (compressionType !== 0) {
		throw bad(path, `compression type ${compressionType} without the compression-type feature bit`);
	}
	const extendedL2 = (incompat & Incompat.extendedL2) !== 0n;
	if (extendedL2 && clusterBits < 14) throw bad(path, 'extended L2 entries need clusters of at least 16 KiB');
	if (refcountOrder > 6) throw bad(path, `refcount order ${refcountOrder} is above 6`);

	const l2EntrySize = extendedL2 ? 16 : 8;
	const l2Entries = cs / l2EntrySize;
	const span = cs * l2Entries; // bytes of virtual disk one L1 entry covers
	const l1Needed = Math.ceil(virtualSize / span);
	if (l1Size < l1Needed) throw bad(path, `L1 table too small (${l1Size} entries, the virtual size needs ${l1Needed})`);
	if (l1Size * 8 > MAX_L1_BYTES) throw bad(path, `L1 table too large (${l1Size} entries)`);
	const inFile = (off: number, len: number, what: string): void => {
		if (!alignedTo(off, cs)) throw bad(path, `${what} offset ${off} is not cluster aligned`);
		if (off === 0 && len > 0) throw bad(path, `${what} at offset 0 overlaps the header`);
		if (off + len > fileSize) throw bad(path, `${what} (${off}+${len}) lies beyond the end of the file (${fileSize})`);
	};
	if (l1Size > 0) inFile(l1Offset, l1Size * 8, 'L1 table');
	if (refcountTableClusters === 0) throw bad(path, 'no refcount table');
	if (refcountTableClusters * cs > MAX_REFTABLE_BYTES) throw bad(path, `refcount table too large (${refcountTableClusters} clusters)`);
	inFile(refcountTableOffset, refcountTableClusters * cs, 'refcount table');
	if (nbSnapshots > MAX_SNAPSHOTS) throw bad(path, `too many snapshots (${nbSnapshots})`);
	if (nbSnapshots > 0) inFile(snapshotsOffset, 40 * nbSnapshots, 'snapshot table');
	if (bitmaps) {
		if (bitmaps.count === 0 || bitmaps.dirSize > 64 * 1024 * 1024) throw bad(path, 'invalid bitmaps extension');
		inFile(bitmaps.dirOffset, bitmaps.dirSize, 'bitmap directory');
	}

	let backingFile: string | undefined;
	if (backingOffset !== 0n) {
		if (backingSize === 0 || backingSize > 1023) throw bad(path, `backing file name length ${backingSize} is invalid`);
		if (backingOffset + BigInt(backingSize) > BigInt(end)) throw bad(path, 'backing file name lies outside the first cluster');
		backingFile = c0.subarray(Number(backingOffset), Number(backingOffset) + backingSize).toString('utf8');
		if (backingFile.includes('\0')) throw bad(path, 'backing file name contains a NUL byte');
		if (/^[a-z0-9+]+:/i.test(backingFile) && !backingFile.startsWith('file:')) {
			throw bad(path, `backing file "${backingFile}" is a protocol URL, not a local file`);
		}
		if (backingFile.startsWith('file:')) backingFile = backingFile.slice(5);
	}
	return {
		version,
		clusterBits,
		clusterSize: cs,
		virtualSize,
		l1Size,
		l1Offset,
		refcountTableOffset,
		refcountTableClusters,
		nbSnapshots,
		snapshotsOffset,
		incompat,
		compat,
		autoclear,
		refcountOrder,
		headerLength,
		compressionType,
		extendedL2,
		l2Entries,
		l2EntrySize,
		...(backingFile !== undefined ? { backingFile } : {}),
		...(backingFormat !== undefined ? { backingFormat } : {}),
		...(bitmaps ? { bitmaps } : {}),
		unknownExtensions,
		featureNames,
	};
}

/** A compressed cluster descriptor split into its host byte range. */
export interface CompressedRef {
	/** Byte offset of the compressed data (not aligned). */
	offset: number;
	/** Bytes that may hold the stream: through the end of its last sector. */
	length: number;
	/** The 512-byte aligned range QEMU counts refcounts for. */
	sectorStart: number;
	sectorBytes: number;
}

export function compressedRef(entry: bigint, clusterBits: number): CompressedRef {
	const shift = BigInt(62 - (clusterBits - 8));
	const offset = Number(entry & ((1n << shift) - 1n));
	const extra = Number((entry >> shift) & ((1n << BigInt(clusterBits - 8)) - 1n));
	const sectorStart = offset - (offset % 512);
	const sectorBytes = (extra + 1) * 512;
	return { offset, length: sectorStart + sectorBytes - offset, sectorStart, sectorBytes };
}

/** Read refcount `index` of a refcount block with 2^order-bit entries. */
export function getRefcount(block: Buffer, order: number, index: number): number {
	switch (order) {
		case 0:
			return ((block[index >> 3] ?? 0) >> (index & 7)) & 1;
		case 1:
			return ((block[index >> 2] ?? 0) >> (2 * (index & 3))) & 3;
		case 2:
			return ((block[index >> 1] ?? 0) >> (4 * (index & 1))) & 15;
		case 3:
			return block[index] ?? 0;
		case 4:
			return block.readUInt16BE(index * 2);
		case 5:
			return block.readUInt32BE(index * 4);
		default: {
			const v = block.readBigUInt64BE(index * 8);
			return v > MAX_SAFE ? Number.MAX_SAFE_INTEGER : Number(v);
		}
	}
}

export function setRefcount(block: Buffer, order: number, index: number, value: number): void {
	const sub = (per: number, bits: number): void => {
		const byte = Math.floor(index / per);
		const shift = bits * (index % per);
		const mask = ((1 << bits) - 1) << shift;
		block[byte] = ((block[byte] ?? 0) & ~mask) | ((value << shift) & mask);
	};
	switch (order) {
		case 0:
			sub(8, 1);
			return;
		case 1:
			sub(4, 2);
			return;
		case 2:
			sub(2, 4);
			return;
		case 3:
			block[index] = value;
			return;
		case 4:
			block.writeUInt16BE(value, index * 2);
			return;
		case 5:
			block.writeUInt32BE(value, index * 4);
			return;
		default:
			block.writeBigUInt64BE(BigInt(value), index * 8);
	}
}

export const maxRefcount = (order: number): number => (order >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** 2 ** order - 1);
