/**
 * dscow on-disk layout: one 4 KiB header, a bitmap of 32-bit little-endian
 * words (bit b of word w = block w*32+b is stored in this image), then the
 * blocks themselves: block N at firstBlock + N * blockSize. The file is
 * sparse and always as long as its last block, so a mapped block has a
 * fixed place and the kernel can remap it like dm-linear.
 *
 * Header (little-endian, offsets in bytes):
 *    0  8  magic "DMUDSCOW"
 *    8  4  version (1)
 *   12  4  flags (FLAG_*)
 *   16  8  virtual size (bytes, a multiple of 512)
 *   24  4  block size (power of two, 4 KiB .. 2 MiB)
 *   28  4  header size (4096)
 *   32  8  first block offset (a multiple of 4096, after the bitmap)
 *   40  8  block count = ceil(virtual size / block size)
 *   48  8  bitmap offset (>= header size, 4-aligned)
 *   56  8  bitmap word count = ceil(block count / 32)
 *   64  8  base size (bytes)
 *   72  8  base mtime (ns since the epoch; 0 for block devices)
 *   80 32  SHA-256 of base size + the base's first and last 64 KiB
 *  112  4  base path length (0 = no base: unallocated blocks read zeros)
 *  116  4  CRC-32 of the 4 KiB header with this field zero
 *  120  8  live bitmap offset (after the bitmap, before the first block)
 *  128 .. 255 reserved (zero)
 *  256 .. base path (UTF-8, absolute)
 *
 * The live bitmap is a second copy of the bitmap, updated (without fsync)
 * each time a block is allocated, so a daemon killed between a write and
 * its commit can be replaced by a new one that still knows every block the
 * kernel has been told about (the disk stayed attached: the page cache holds
 * those writes). After a host crash it is ignored: only the committed
 * bitmap, made durable after the data, is trusted.
 *
 * decodeHeader() trusts nothing: every field is checked against the others
 * and the file size before anyone uses it, so a hostile header is refused
 * with one line and nothing is ever written to such a file.
 */
import { crc32 } from 'node:zlib';
import { DmuError } from '../../errors.js';

export const MAGIC = Buffer.from('DMUDSCOW', 'latin1');
export const VERSION = 1;
export const HEADER_SIZE = 4096;
export const PATH_OFFSET = 256;
export const MAX_PATH = HEADER_SIZE - PATH_OFFSET;

/** The image was closed cleanly: every allocated block's bit is on disk. */
export const FLAG_CLEAN = 1 << 0;
const KNOWN_FLAGS = FLAG_CLEAN;

export const MIN_BLOCK = 4096;
export const MAX_BLOCK = 2 * 1024 * 1024;
export const DEFAULT_BLOCK = 64 * 1024;
/** 2^31 blocks: a 256 MiB bitmap in memory (128 TiB at 64 KiB blocks). */
export const MAX_BLOCKS = 2n ** 31n;
/** Keep every file offset exactly representable as a JS number. */
const MAX_OFFSET = BigInt(Number.MAX_SAFE_INTEGER);

export interface BaseIdentity {
	size: bigint;
	mtimeNs: bigint;
	hash: Buffer;
}

export interface Header {
	version: number;
	flags: number;
	virtualSize: bigint;
	blockSize: number;
	firstBlock: bigint;
	blockCount: bigint;
	bitmapOffset: bigint;
	bitmapWords: bigint;
	liveOffset: bigint;
	/** Absolute path of the base, or '' for a plain sparse image. */
	basePath: string;
	base: BaseIdentity;
}

const bad = (path: string, why: string) =>
	new DmuError('DMU_ERR_BAD_IMAGE', `${path}: not a usable dscow image: ${why}`);

export const isPowerOfTwo = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

const ceilDiv = (a: bigint, b: bigint) => (a + b - 1n) / b;
const roundUp = (a: bigint, b: bigint) => ceilDiv(a, b) * b;

/** Geometry for a new image; throws for sizes the format cannot hold. */
export function geometry(virtualSize: bigint, blockSize: number) {
	if (!isPowerOfTwo(blockSize) || blockSize < MIN_BLOCK || blockSize > MAX_BLOCK) {
		throw new DmuError(
			'DMU_ERR_BAD_OPTION',
			`dscow block size must be a power of two from ${MIN_BLOCK} to ${MAX_BLOCK} bytes (got ${blockSize})`,
		);
	}
	if (virtualSize <= 0n) throw new DmuError('DMU_ERR_BAD_OPTION', 'dscow: the virtual size must be more than 0');
	const bs = BigInt(blockSize);
	const blockCount = ceilDiv(virtualSize, bs);
	if (blockCount > MAX_BLOCKS) {
		throw new DmuError(
			'DMU_ERR_BAD_OPTION',
			`dscow: ${virtualSize} bytes need ${blockCount} blocks of ${blockSize}; the most is ${MAX_BLOCKS} (use bigger blocks)`,
		);
	}
	const bitmapWords = ceilDiv(blockCount, 32n);
	const bitmapOffset = BigInt(HEADER_SIZE);
	// The seed aligned the first block to the block size (65536 for 64 KiB
	// blocks): a block then never straddles a larger device page or stripe.
	const liveOffset = bitmapOffset + bitmapWords * 4n;
	const firstBlock = roundUp(liveOffset + bitmapWords * 4n, bs);
	if (firstBlock + blockCount * bs > MAX_OFFSET) {
		throw new DmuError('DMU_ERR_BAD_OPTION', `dscow: ${virtualSize} bytes is too large`);
	}
	return { blockCount, bitmapWords, bitmapOffset, liveOffset, firstBlock };
}

export function encodeHeader(h: Header): Buffer {
	const b = Buffer.alloc(HEADER_SIZE);
	MAGIC.copy(b, 0);
	b.writeUInt32LE(h.version, 8);
	b.writeUInt32LE(h.flags, 12);
	b.writeBigUInt64LE(h.virtualSize, 16);
	b.writeUInt32LE(h.blockSize, 24);
	b.writeUInt32LE(HEADER_SIZE, 28);
	b.writeBigUInt64LE(h.firstBlock, 32);
	b.writeBigUInt64LE(h.blockCount, 40);
	b.writeBigUInt64LE(h.bitmapOffset, 48);
	b.writeBigUInt64LE(h.bitmapWords, 56);
	b.writeBigUInt64LE(h.base.size, 64);
	b.writeBigUInt64LE(h.base.mtimeNs, 72);
	h.base.hash.copy(b, 80, 0, 32);
	const path = Buffer.from(h.basePath, 'utf8');
	if (path.length > MAX_PATH) {
		throw new DmuError('DMU_ERR_BAD_OPTION', `dscow: base path is longer than ${MAX_PATH} bytes`);
	}
	b.writeUInt32LE(path.length, 112);
	b.writeBigUInt64LE(h.liveOffset, 120);
	path.copy(b, PATH_OFFSET);
	b.writeUInt32LE(crc32(b), 116);
	return b;
}

export const hasMagic = (buf: Buffer) => buf.length >= MAGIC.length && buf.subarray(0, MAGIC.length).equals(MAGIC);

/**
 * Parse and validate a header read from a file of `fileSize` bytes.
 * Every failure is one DmuError line naming the file and the field.
 */
export function decodeHeader(buf: Buffer, fileSize: bigint, path: string): Header {
	if (buf.length < HEADER_SIZE || fileSize < BigInt(HEADER_SIZE)) throw bad(path, 'file is shorter than the 4 KiB header');
	if (!hasMagic(buf)) throw bad(path, 'no dscow magic');
	const stored = buf.readUInt32LE(116);
	const copy = Buffer.from(buf.subarray(0, HEADER_SIZE));
	copy.writeUInt32LE(0, 116);
	if (crc32(copy) !== stored) throw bad(path, 'header checksum mismatch (the header is damaged)');
	const version = buf.readUInt32LE(8);
	if (version !== VERSION) throw bad(path, `version ${version} is not supported (this dmu knows ${VERSION})`);
	const flags = buf.readUInt32LE(12);
	if (flags & ~KNOWN_FLAGS) throw bad(path, `unknown flags 0x${(flags & ~KNOWN_FLAGS).toString(16)}`);
	if (buf.readUInt32LE(28) !== HEADER_SIZE) throw bad(path, `header size ${buf.readUInt32LE(28)} is not ${HEADER_SIZE}`);

	const blockSize = buf.readUInt32LE(24);
	if (!isPowerOfTwo(blockSize) || blockSize < MIN_BLOCK || blockSize > MAX_BLOCK) {
		throw bad(path, `block size ${blockSize} is not a power of two from ${MIN_BLOCK} to ${MAX_BLOCK}`);
	}
	const bs = BigInt(blockSize);
	const virtualSize = buf.readBigUInt64LE(16);
	if (virtualSize === 0n || virtualSize % 512n !== 0n) throw bad(path, `virtual size ${virtualSize} is not a positive multiple of 512`);
	const blockCount = buf.readBigUInt64LE(40);
	if (blockCount !== ceilDiv(virtualSize, bs)) throw bad(path, `block count ${blockCount} does not match the virtual size ${virtualSize}`);
	if (blockCount > MAX_BLOCKS) throw bad(path, `block count ${blockCount} is more than ${MAX_BLOCKS}`);
	const bitmapWords = buf.readBigUInt64LE(56);
	if (bitmapWords !== ceilDiv(blockCount, 32n)) throw bad(path, `bitmap count ${bitmapWords} does not match ${blockCount} blocks`);
	const bitmapOffset = buf.readBigUInt64LE(48);
	if (bitmapOffset < BigInt(HEADER_SIZE) || bitmapOffset % 4n !== 0n) throw bad(path, `bitmap offset ${bitmapOffset} overlaps the header or is unaligned`);
	const bitmapEnd = bitmapOffset + bitmapWords * 4n;
	if (bitmapEnd > fileSize) throw bad(path, `bitmap (ends at ${bitmapEnd}) lies beyond the end of the file (${fileSize} bytes)`);
	const liveOffset = buf.readBigUInt64LE(120);
	if (liveOffset < bitmapEnd || liveOffset % 4n !== 0n) throw bad(path, `live bitmap offset ${liveOffset} overlaps the bitmap or is unaligned`);
	const liveEnd = liveOffset + bitmapWords * 4n;
	if (liveEnd > fileSize) throw bad(path, `live bitmap (ends at ${liveEnd}) lies beyond the end of the file (${fileSize} bytes)`);
	const firstBlock = buf.readBigUInt64LE(32);
	if (firstBlock < liveEnd) throw bad(path, `first block at ${firstBlock} overlaps the bitmap (ends at ${liveEnd})`);
	if (firstBlock % 4096n !== 0n) throw bad(path, `first block offset ${firstBlock} is not a multiple of 4096`);
	if (firstBlock + blockCount * bs > MAX_OFFSET) throw bad(path, `blocks would end past ${MAX_OFFSET} bytes`);

	const pathLen = buf.readUInt32LE(112);
	if (pathLen > MAX_PATH) throw bad(path, `base path length ${pathLen} is more than ${MAX_PATH}`);
	const rawPath = buf.subarray(PATH_OFFSET, PATH_OFFSET + pathLen);
	const basePath = rawPath.toString('utf8');
	if (rawPath.includes(0) || !Buffer.from(basePath, 'utf8').equals(rawPath)) throw bad(path, 'base path is not valid UTF-8 text');
	if (pathLen > 0 && !basePath.startsWith('/')) throw bad(path, `base path "${basePath}" is not absolute`);
	const base: BaseIdentity = {
		size: buf.readBigUInt64LE(64),
		mtimeNs: buf.readBigUInt64LE(72),
		hash: Buffer.from(buf.subarray(80, 112)),
	};
	if (pathLen > 0 && (base.size === 0n || base.size > virtualSize)) {
		throw bad(path, `base size ${base.size} is 0 or larger than the virtual size ${virtualSize}`);
	}
	return { version, flags, virtualSize, blockSize, firstBlock, blockCount, bitmapOffset, bitmapWords, liveOffset, basePath, base };
}

/** Bytes the file must have so every block lies inside it. */
export const dataEnd = (h: Header) => h.firstBlock + h.blockCount * BigInt(h.blockSize);
