/**
 * VHD on-disk layout (Microsoft "Virtual Hard Disk Image Format
 * Specification" 1.0): the 512-byte footer every VHD ends with (a copy
 * heads dynamic disks), the 1024-byte dynamic header, the BAT, and the
 * CHS geometry rules. All integers are big-endian.
 */

export const FOOTER_SIZE = 512;
export const HEADER_SIZE = 1024;
export const COOKIE = 'conectix';
export const DYN_COOKIE = 'cxsparse';
export const BAT_UNUSED = 0xffffffff;
export const DISK_FIXED = 2;
export const DISK_DYNAMIC = 3;
export const DISK_DIFF = 4;
/** Seconds between the Unix epoch and the VHD epoch (2000-01-01 UTC). */
export const VHD_EPOCH = 946684800;
/** 65535 cylinders x 16 heads x 255 sectors: "no CHS, use current size". */
export const MAX_GEOMETRY = 65535n * 16n * 255n;
/** The largest disk qemu and Hyper-V accept (2040 GiB). */
export const MAX_SECTORS = 0xff000000n;

export interface Footer {
	features: number;
	version: number;
	dataOffset: bigint;
	timestamp: number;
	creatorApp: string;
	creatorVersion: number;
	creatorOs: string;
	originalSize: bigint;
	currentSize: bigint;
	cylinders: number;
	heads: number;
	sectorsPerTrack: number;
	diskType: number;
	checksum: number;
	uniqueId: Buffer;
	savedState: number;
}

export interface ParentLocator {
	code: string;
	/** Space reserved, as stored (sectors per the spec, bytes in practice). */
	dataSpace: number;
	dataLength: number;
	dataOffset: bigint;
}

export interface DynHeader {
	dataOffset: bigint;
	tableOffset: bigint;
	version: number;
	maxTableEntries: number;
	blockSize: number;
	checksum: number;
	parentUniqueId: Buffer;
	parentTimestamp: number;
	parentName: string;
	locators: ParentLocator[];
}

/** One's complement of the byte sum, the checksum field counted as zero. */
export function checksum(buf: Buffer, fieldAt: number): number {
	let sum = 0;
	for (let i = 0; i < buf.length; i++) {
		if (i >= fieldAt && i < fieldAt + 4) continue;
		sum = (sum + (buf[i] as number)) >>> 0;
	}
	return ~sum >>> 0;
}

export function parseFooter(b: Buffer): Footer | undefined {
	if (b.length < FOOTER_SIZE || b.toString('latin1', 0, 8) !== COOKIE) return undefined;
	return {
		features: b.readUInt32BE(8),
		version: b.readUInt32BE(12),
		dataOffset: b.readBigUInt64BE(16),
		timestamp: b.readUInt32BE(24),
		creatorApp: b.toString('latin1', 28, 32),
		creatorVersion: b.readUInt32BE(32),
		creatorOs: b.toString('latin1', 36, 40),
		originalSize: b.readBigUInt64BE(40),
		currentSize: b.readBigUInt64BE(48),
		cylinders: b.readUInt16BE(56),
		heads: b.readUInt8(58),
		sectorsPerTrack: b.readUInt8(59),
		diskType: b.readUInt32BE(60),
		checksum: b.readUInt32BE(64),
		uniqueId: Buffer.from(b.subarray(68, 84)),
		savedState: b.readUInt8(84),
	};
}

export function footerChecksumOk(b: Buffer): boolean {
	return checksum(b.subarray(0, FOOTER_SIZE), 64) === b.readUInt32BE(64);
}

export function serializeFooter(f: Footer): Buffer {
	const b = Buffer.alloc(FOOTER_SIZE);
	b.write(COOKIE, 0, 'latin1');
	b.writeUInt32BE(f.features, 8);
	b.writeUInt32BE(f.version, 12);
	b.writeBigUInt64BE(f.dataOffset, 16);
	b.writeUInt32BE(f.timestamp, 24);
	b.write(f.creatorApp.padEnd(4, '\0').slice(0, 4), 28, 'latin1');
	b.writeUInt32BE(f.creatorVersion, 32);
	b.write(f.creatorOs.padEnd(4, '\0').slice(0, 4), 36, 'latin1');
	b.writeBigUInt64BE(f.originalSize, 40);
	b.writeBigUInt64BE(f.currentSize, 48);
	b.writeUInt16BE(f.cylinders, 56);
	b.writeUInt8(f.heads, 58);
	b.writeUInt8(f.sectorsPerTrack, 59);
	b.writeUInt32BE(f.diskType, 60);
	f.uniqueId.copy(b, 68, 0, 16);
	b.writeUInt8(f.savedState, 84);
	b.writeUInt32BE(checksum(b, 64), 64);
	return b;
}

/** UTF-16BE, which Node does not decode natively. */
export function utf16be(b: Buffer): string {
	const sw = Buffer.from(b);
	sw.swap16();
	return sw.toString('utf16le');
}

export function toUtf16be(s: string): Buffer {
	const b = Buffer.from(s, 'utf16le');
	b.swap16();
	return b;
}

export function parseDynHeader(b: Buffer): DynHeader | undefined {
	if (b.length < HEADER_SIZE || b.toString('latin1', 0, 8) !== DYN_COOKIE) return undefined;
	const name = utf16be(b.subarray(64, 576));
	const locators: ParentLocator[] = [];
	for (let i = 0; i < 8; i++) {
		const at = 576 + i * 24;
		const code = b.toString('latin1', at, at + 4);
		if (b.readUInt32BE(at) === 0) continue;
		locators.push({
			code,
			dataSpace: b.readUInt32BE(at + 4),
			dataLength: b.readUInt32BE(at + 8),
			dataOffset: b.readBigUInt64BE(at + 16),
		});
	}
	return {
		dataOffset: b.readBigUInt64BE(8),
		tableOffset: b.readBigUInt64BE(16),
		version: b.readUInt32BE(24),
		maxTableEntries: b.readUInt32BE(28),
		blockSize: b.readUInt32BE(32),
		checksum: b.readUInt32BE(36),
		parentUniqueId: Buffer.from(b.subarray(40, 56)),
		parentTimestamp: b.readUInt32BE(56),
		parentName: name.replace(/\0.*$/s, ''),
		locators,
	};
}

export function serializeDynHeader(h: DynHeader): Buffer {
	const b = Buffer.alloc(HEADER_SIZE);
	b.write(DYN_COOKIE, 0, 'latin1');
	b.writeBigUInt64BE(h.dataOffset, 8);
	b.writeBigUInt64BE(h.tableOffset, 16);
	b.writeUInt32BE(h.version, 24);
	b.writeUInt32BE(h.maxTableEntries, 28);
	b.writeUInt32BE(h.blockSize, 32);
	h.parentUniqueId.copy(b, 40, 0, 16);
	b.writeUInt32BE(h.parentTimestamp, 56);
	toUtf16be(h.parentName).copy(b, 64, 0, 512);
	h.locators.slice(0, 8).forEach((l, i) => {
		const at = 576 + i * 24;
		b.write(l.code.padEnd(4, '\0').slice(0, 4), at, 'latin1');
		b.writeUInt32BE(l.dataSpace, at + 4);
		b.writeUInt32BE(l.dataLength, at + 8);
		b.writeBigUInt64BE(l.dataOffset, at + 16);
	});
	b.writeUInt32BE(checksum(b, 36), 36);
	return b;
}

export function dynHeaderChecksumOk(b: Buffer): boolean {
	return checksum(b.subarray(0, HEADER_SIZE), 36) === b.readUInt32BE(36);
}

export interface Geometry {
	cylinders: number;
	heads: number;
	sectorsPerTrack: number;
}

/** The spec's CHS algorithm (appendix "CHS calculation"), as qemu does it. */
export function geometryFor(totalSectors: bigint): Geometry {
	const total = totalSectors > MAX_GEOMETRY ? MAX_GEOMETRY : totalSectors;
	let spt: bigint;
	let heads: bigint;
	let cth: bigint;
	if (total >= 65535n * 16n * 63n) {
		spt = 255n;
		heads = 16n;
		cth = total / spt;
	} else {
		spt = 17n;
		cth = total / spt;
		heads = (cth + 1023n) / 1024n;
		if (heads < 4n) heads = 4n;
		if (cth >= heads * 1024n || heads > 16n) {
			spt = 31n;
			heads = 16n;
			cth = total / spt;
		}
		if (cth >= heads * 1024n) {
			spt = 63n;
			heads = 16n;
			cth = total / spt;
		}
	}
	return { cylinders: Number(cth / heads), heads: Number(heads), sectorsPerTrack: Number(spt) };
}

/**
 * The size a new disk of `bytes` gets: rounded up to a whole CHS geometry,
 * as qemu does, so tools that size by CHS and tools that size by the
 * footer's current size agree. Past the largest geometry the size is kept.
 */
export function createSize(bytes: bigint): { size: bigint; geometry: Geometry } {
	const want = (bytes + 511n) / 512n;
	let g: Geometry = { cylinders: 0, heads: 0, sectorsPerTrack: 0 };
	for (let i = 0n; want > BigInt(g.cylinders * g.heads * g.sectorsPerTrack); i++) g = geometryFor(want + i);
	const chs = BigInt(g.cylinders * g.heads * g.sectorsPerTrack);
	return { size: (chs === MAX_GEOMETRY ? want : chs) * 512n, geometry: g };
}

/**
 * The disk size readers agree on (qemu's rule): Virtual PC and qemu size a
 * disk by its CHS geometry, Hyper-V, XenServer and others by the footer's
 * current size; the maximum geometry always means "current size".
 */
export function virtualSizeOf(f: Footer): bigint {
	const chs = BigInt(f.cylinders) * BigInt(f.heads) * BigInt(f.sectorsPerTrack);
	const bySize = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0', 'dmu '].includes(f.creatorApp);
	if (bySize || chs === MAX_GEOMETRY) return f.currentSize & ~511n;
	return chs * 512n;
}

export const vhdNow = (): number => Math.max(0, Math.floor(Date.now() / 1000) - VHD_EPOCH) >>> 0;
