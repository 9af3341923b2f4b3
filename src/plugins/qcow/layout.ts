/**
 * qcow (version 1) on-disk layout, as in qemu's block/qcow.c: a 48-byte
 * big-endian header, the backing file name after it, then the L1 table
 * (8-byte offsets of L2 tables), L2 tables (8-byte cluster offsets; bit 63
 * marks a compressed cluster whose byte size sits in the bits below it).
 */

export const MAGIC = 0x514649fb; // "QFI\xfb"
export const VERSION = 1;
export const HEADER_SIZE = 48;
export const COMPRESSED = 1n << 63n;

export interface QcowHeader {
	backingOffset: bigint;
	backingSize: number;
	mtime: number;
	size: bigint;
	clusterBits: number;
	l2Bits: number;
	cryptMethod: number;
	l1Offset: bigint;
}

export function parseHeader(b: Buffer): QcowHeader | undefined {
	if (b.length < HEADER_SIZE || b.readUInt32BE(0) !== MAGIC || b.readUInt32BE(4) !== VERSION) return undefined;
	return {
		backingOffset: b.readBigUInt64BE(8),
		backingSize: b.readUInt32BE(16),
		mtime: b.readUInt32BE(20),
		size: b.readBigUInt64BE(24),
		clusterBits: b.readUInt8(32),
		l2Bits: b.readUInt8(33),
		cryptMethod: b.readUInt32BE(36),
		l1Offset: b.readBigUInt64BE(40),
	};
}

export function serializeHeader(h: QcowHeader): Buffer {
	const b = Buffer.alloc(HEADER_SIZE);
	b.writeUInt32BE(MAGIC, 0);
	b.writeUInt32BE(VERSION, 4);
	b.writeBigUInt64BE(h.backingOffset, 8);
	b.writeUInt32BE(h.backingSize, 16);
	b.writeUInt32BE(h.mtime, 20);
	b.writeBigUInt64BE(h.size, 24);
	b.writeUInt8(h.clusterBits, 32);
	b.writeUInt8(h.l2Bits, 33);
	b.writeUInt32BE(h.cryptMethod, 36);
	b.writeBigUInt64BE(h.l1Offset, 40);
	return b;
}

/** Decode an L2 entry: where the cluster is and how it is stored. */
export function decodeEntry(e: bigint, clusterBits: number): { compressed: boolean; offset: bigint; csize: number } {
	if (e & COMPRESSED) {
		const shift = BigInt(63 - clusterBits);
		const mask = (1n << shift) - 1n;
		return { compressed: true, offset: e & mask, csize: Number((e >> shift) & ((1n << BigInt(clusterBits)) - 1n)) };
	}
	return { compressed: false, offset: e, csize: 0 };
}
