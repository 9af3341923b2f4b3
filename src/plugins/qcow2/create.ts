/**
 * qemu-img create, for qcow2: header (v2 = compat 0.10, v3 = compat 1.1),
 * optional backing file name and format, a refcount table and blocks that
 * count every metadata cluster, and an empty L1 table.
 *
 * -o options understood: compat, cluster_size, refcount_bits,
 * lazy_refcounts, extended_l2, backing_fmt, compression_type (zlib only).
 */
import { type FileHandle, open } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { DmuError } from '../../errors.js';
import { pluginFor } from '../registry.js';
import type { CreateOptions } from '../types.js';
import { COMPAT_LAZY_REFCOUNTS, Ext, HEADER_V2_LENGTH, Incompat, MAX_L1_BYTES, QCOW2_MAGIC, setRefcount } from './layout.js';

const usage = (msg: string): DmuError => new DmuError('DMU_ERR_USAGE', `qcow2 create: ${msg}`);

function parseSize(v: string, what: string): number {
	const m = /^(\d+)([kKmMgGtT]?)$/.exec(v);
	if (!m) throw usage(`${what} "${v}" is not a size`);
	const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[(m[2] ?? '').toLowerCase()] ?? 1;
	return Number(m[1]) * mult;
}

const onOff = (v: string | undefined, what: string): boolean => {
	if (v === undefined || v === 'off' || v === 'false') return false;
	if (v === 'on' || v === 'true') return true;
	throw usage(`${what} must be on or off`);
};

export async function createQcow2(path: string, opts: CreateOptions): Promise<void> {
	const o = opts.options ?? {};
	const compat = o.compat ?? 'v3';
	let version: 2 | 3;
	if (compat === '0.10' || compat === 'v2') version = 2;
	else if (compat === '1.1' || compat === 'v3') version = 3;
	else throw usage(`compat must be 0.10 (v2) or 1.1 (v3), not "${compat}"`);
	const cs = opts.blockSize ?? (o.cluster_size ? parseSize(o.cluster_size, 'cluster_size') : 65536);
	const bits = Math.log2(cs);
	if (!Number.isInteger(bits) || bits < 9 || bits > 21) throw usage(`cluster size ${cs} must be a power of two from 512 to 2M`);
	const refBits = o.refcount_bits ? Number(o.refcount_bits) : 16;
	const order = Math.log2(refBits);
	if (!Number.isInteger(order) || order < 0 || order > 6) throw usage(`refcount_bits ${o.refcount_bits} must be a power of two up to 64`);
	if (version === 2 && refBits !== 16) throw usage('compat 0.10 images only have 16-bit refcounts');
	const lazy = onOff(o.lazy_refcounts, 'lazy_refcounts');
	const ext = onOff(o.extended_l2, 'extended_l2');
	if (version === 2 && (lazy || ext)) throw usage('lazy_refcounts and extended_l2 need compat 1.1');
	if (ext && cs < 16384) throw usage('extended_l2 needs clusters of at least 16K');
	if (o.compression_type && o.compression_type !== 'zlib') throw usage('only compression_type=zlib can be created');

	const base = opts.base;
	const baseFormat = opts.baseFormat ?? o.backing_fmt;
	let size = opts.size;
	if (base !== undefined && size === undefined) {
		// Like qemu-img, a relative backing name is relative to the new image.
		const full = isAbsolute(base) ? base : resolve(dirname(path), base);
		const img = await (await pluginFor(full, baseFormat)).open(full, { readOnly: true, allowedRoots: [dirname(full)] });
		size = img.virtualSize;
		await img.close();
	}
	if (size === undefined) throw usage('a size is needed (or a backing file to take it from)');
	if (size < 0n || size > BigInt(Number.MAX_SAFE_INTEGER)) throw usage(`size ${size} is out of range`);
	const vsize = Number(size);

	// Layout: header cluster, refcount table, refcount blocks, L1 table.
	const l2Entries = cs / (ext ? 16 : 8);
	const l1Entries = Math.ceil(vsize / (cs * l2Entries));
	if (l1Entries * 8 > MAX_L1_BYTES) throw usage(`size ${vsize} needs an L1 table over 32 MiB: use larger clusters`);
	const l1Clusters = Math.ceil((l1Entries * 8) / cs);
	const perBlock = (cs * 8) / refBits;
	let rb = 1;
	let rt = 1;
	for (;;) {
		const total = 1 + rt + rb + l1Clusters;
		const nrb = Math.ceil(total / perBlock);
		const nrt = Math.ceil((nrb * 8) / cs);
		if (nrb === rb && nrt === rt) break;
		rb = nrb;
		rt = nrt;
	}
	const total = 1 + rt + rb + l1Clusters;
	const rtOff = cs;
	const rbOff = rtOff + rt * cs;
	const l1Off = rbOff + rb * cs;

	const hdr = Buffer.alloc(cs);
	const headerLength = version === 3 ? 112 : HEADER_V2_LENGTH;
	hdr.writeUInt32BE(QCOW2_MAGIC, 0);
	hdr.writeUInt32BE(version, 4);
	hdr.writeUInt32BE(bits, 20);
	hdr.writeBigUInt64BE(BigInt(vsize), 24);
	hdr.writeUInt32BE(l1Entries, 36);
	hdr.writeBigUInt64BE(BigInt(l1Entries ? l1Off : 0), 40);
	hdr.writeBigUInt64BE(BigInt(rtOff), 48);
	hdr.writeUInt32BE(rt, 56);
	if (version === 3) {
		hdr.writeBigUInt64BE(ext ? Incompat.extendedL2 : 0n, 72);
		hdr.writeBigUInt64BE(lazy ? COMPAT_LAZY_REFCOUNTS : 0n, 80);
		hdr.writeUInt32BE(order, 96);
		hdr.writeUInt32BE(headerLength, 100);
	}
	let pos = headerLength;
	const put = (type: number, data: Buffer): void => {
		const padded = Math.ceil(data.length / 8) * 8;
		if (pos + 8 + padded + 8 > cs) throw usage('header extensions do not fit in one cluster: use larger clusters');
		hdr.writeUInt32BE(type, pos);
		hdr.writeUInt32BE(data.length, pos + 4);
		data.copy(hdr, pos + 8);
		pos += 8 + padded;
	};
	if (base !== undefined && baseFormat) put(Ext.backingFormat, Buffer.from(baseFormat, 'latin1'));
	pos += 8; // end-of-extensions marker (zeros)
	if (base !== undefined) {
		const name = Buffer.from(base, 'utf8');
		if (name.length > 1023) throw usage('backing file name longer than 1023 bytes');
		if (pos + name.length > cs) throw usage('backing file name does not fit in the first cluster: use larger clusters');
		name.copy(hdr, pos);
		hdr.writeBigUInt64BE(BigInt(pos), 8);
		hdr.writeUInt32BE(name.length, 16);
	}

	const table = Buffer.alloc(rt * cs);
	for (let i = 0; i < rb; i++) table.writeBigUInt64BE(BigInt(rbOff + i * cs), i * 8);
	const blocks = Buffer.alloc(rb * cs);
	for (let c = 0; c < total; c++) {
		const blk = blocks.subarray(Math.floor(c / perBlock) * cs);
		setRefcount(blk, order, c % perBlock, 1);
	}

	let fh: FileHandle;
	try {
		fh = await open(path, 'w');
	} catch (e) {
		throw new DmuError('DMU_ERR_OPEN', `cannot create ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
	}
	try {
		await fh.truncate(total * cs);
		await fh.write(hdr, 0, cs, 0);
		await fh.write(table, 0, table.length, rtOff);
		await fh.write(blocks, 0, blocks.length, rbOff);
		await fh.datasync();
	} finally {
		await fh.close();
	}
}
