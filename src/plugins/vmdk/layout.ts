/**
 * VMDK on-disk layout (VMware "Virtual Disk Format 1.1", libvmdk's notes,
 * qemu block/vmdk.c): the sparse extent header (little-endian, 512 bytes),
 * stream markers, and the text descriptor.
 */

export const MAGIC = 0x564d444b; // "KDMV" read as a little-endian u32
export const HEADER_SIZE = 512;
export const FLAG_NL_DETECT = 1 << 0;
export const FLAG_RGD = 1 << 1;
export const FLAG_ZERO_GRAIN = 1 << 2;
export const FLAG_COMPRESS = 1 << 16;
export const FLAG_MARKER = 1 << 17;
export const GD_AT_END = 0xffffffffffffffffn;
/** A grain table entry meaning "this grain reads as zeros". */
export const GTE_ZEROED = 1;
export const MARKER_EOS = 0;
export const MARKER_GT = 1;
export const MARKER_GD = 2;
export const MARKER_FOOTER = 3;
export const COMPRESSION_DEFLATE = 1;

export interface SparseHeader {
	version: number;
	flags: number;
	/** Sectors this extent holds. */
	capacity: bigint;
	/** Sectors per grain. */
	grainSize: bigint;
	descriptorOffset: bigint;
	descriptorSize: bigint;
	numGTEsPerGT: number;
	rgdOffset: bigint;
	gdOffset: bigint;
	overHead: bigint;
	uncleanShutdown: number;
	compressAlgorithm: number;
}

export function parseHeader(b: Buffer): SparseHeader | undefined {
	if (b.length < HEADER_SIZE || b.readUInt32LE(0) !== MAGIC) return undefined;
	return {
		version: b.readUInt32LE(4),
		flags: b.readUInt32LE(8),
		capacity: b.readBigUInt64LE(12),
		grainSize: b.readBigUInt64LE(20),
		descriptorOffset: b.readBigUInt64LE(28),
		descriptorSize: b.readBigUInt64LE(36),
		numGTEsPerGT: b.readUInt32LE(44),
		rgdOffset: b.readBigUInt64LE(48),
		gdOffset: b.readBigUInt64LE(56),
		overHead: b.readBigUInt64LE(64),
		uncleanShutdown: b.readUInt8(72),
		compressAlgorithm: b.readUInt16LE(77),
	};
}

export function serializeHeader(h: SparseHeader): Buffer {
	const b = Buffer.alloc(HEADER_SIZE);
	b.writeUInt32LE(MAGIC, 0);
	b.writeUInt32LE(h.version, 4);
	b.writeUInt32LE(h.flags, 8);
	b.writeBigUInt64LE(h.capacity, 12);
	b.writeBigUInt64LE(h.grainSize, 20);
	b.writeBigUInt64LE(h.descriptorOffset, 28);
	b.writeBigUInt64LE(h.descriptorSize, 36);
	b.writeUInt32LE(h.numGTEsPerGT, 44);
	b.writeBigUInt64LE(h.rgdOffset, 48);
	b.writeBigUInt64LE(h.gdOffset, 56);
	b.writeBigUInt64LE(h.overHead, 64);
	b.writeUInt8(h.uncleanShutdown, 72);
	// The newline-detection bytes: a file mangled by a text transfer shows.
	b.set([0x0a, 0x20, 0x0d, 0x0a], 73);
	b.writeUInt16LE(h.compressAlgorithm, 77);
	return b;
}

export type ExtentType = 'FLAT' | 'SPARSE' | 'ZERO' | 'VMFS' | 'VMFSSPARSE';

export interface ExtentLine {
	access: 'RW' | 'RDONLY' | 'NOACCESS';
	sectors: bigint;
	type: ExtentType;
	file?: string;
	/** Sector offset inside a flat file. */
	offset: bigint;
}

export interface Descriptor {
	cid: number;
	parentCid: number;
	createType: string;
	parentHint?: string;
	extents: ExtentLine[];
	/** Everything else, kept for rewriting. */
	text: string;
}

const EXTENT_RE = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(FLAT|SPARSE|ZERO|VMFS|VMFSSPARSE|VMFSRDM|VMFSRAW)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/;

/** Parse a descriptor; undefined if it does not look like one. */
export function parseDescriptor(text: string): Descriptor | { error: string } {
	const d: Descriptor = { cid: 0, parentCid: 0xffffffff, createType: '', extents: [], text };
	for (const raw of text.split(/\r?\n/)) {
		const line = raw.replace(/\0.*$/s, '').trim();
		if (line === '' || line.startsWith('#')) continue;
		const kv = /^([A-Za-z0-9_.]+)\s*=\s*"?([^"]*)"?\s*$/.exec(line);
		const ext = EXTENT_RE.exec(line);
		if (ext) {
			const type = ext[3] as string;
			if (type === 'VMFSRDM' || type === 'VMFSRAW') return { error: `extent type ${type} is not supported` };
			if (type !== 'ZERO' && ext[4] === undefined) return { error: `extent line without a file name: ${line}` };
			d.extents.push({
				access: ext[1] as ExtentLine['access'],
				sectors: BigInt(ext[2] as string),
				type: type as ExtentType,
				...(ext[4] !== undefined ? { file: ext[4] } : {}),
				offset: BigInt(ext[5] ?? '0'),
			});
		} else if (kv) {
			const [, k, v] = kv as unknown as [string, string, string];
			if (k === 'CID') d.cid = Number.parseInt(v, 16) >>> 0;
			else if (k === 'parentCID') d.parentCid = Number.parseInt(v, 16) >>> 0;
			else if (k === 'createType') d.createType = v;
			else if (k === 'parentFileNameHint') d.parentHint = v;
		} else if (/^(RW|RDONLY|NOACCESS)\s/.test(line)) {
			return { error: `cannot parse extent line: ${line}` };
		}
	}
	return d;
}

export const hex8 = (n: number) => (n >>> 0).toString(16).padStart(8, '0');

/** A descriptor as qemu writes it (fields other tools expect). */
export function makeDescriptor(o: {
	cid: number;
	parentCid: number;
	createType: string;
	parentHint?: string;
	extents: string[];
	sectors: bigint;
}): string {
	const cyl = (o.sectors + 63n * 16n - 1n) / (63n * 16n);
	return [
		'# Disk DescriptorFile',
		'version=1',
		`CID=${hex8(o.cid)}`,
		`parentCID=${hex8(o.parentCid)}`,
		`createType="${o.createType}"`,
		...(o.parentHint ? [`parentFileNameHint="${o.parentHint}"`] : []),
		'',
		'# Extent description',
		...o.extents,
		'',
		'# The Disk Data Base',
		'#DDB',
		'',
		'ddb.virtualHWVersion = "4"',
		`ddb.geometry.cylinders = "${cyl > 16383n ? 16383n : cyl}"`,
		'ddb.geometry.heads = "16"',
		'ddb.geometry.sectors = "63"',
		'ddb.adapterType = "ide"',
		'',
	].join('\n');
}
