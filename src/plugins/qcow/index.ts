/**
 * qcow: qemu's first copy-on-write format (version 1). Read-write,
 * backing files of any format, compressed clusters read (and rewritten
 * uncompressed on write). Encrypted images are refused: their AES scheme
 * is broken and qemu itself no longer opens them for writing.
 */
import { dirname, resolve } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { DmuError, isDmuError } from '../../errors.js';
import { Backing, backingDisplayPath } from '../raw/backing.js';
import { badImage, ImageFile } from '../raw/io.js';
import { pluginFor } from '../registry.js';
import type { CheckResult, ImageInfo, OpenOptions, Plugin } from '../types.js';
import { QcowImage } from './image.js';
import { HEADER_SIZE, MAGIC, parseHeader, type QcowHeader, serializeHeader } from './layout.js';

interface Meta {
	header: QcowHeader;
	l1: BigUint64Array;
	backingName?: string;
	fileSize: bigint;
}

async function readMeta(file: ImageFile): Promise<Meta> {
	const path = file.path;
	const fileSize = await file.size();
	const header = parseHeader(await file.read(0, HEADER_SIZE, 'qcow header'));
	if (!header) throw badImage(path, 'not a qcow (version 1) image');
	if (header.size <= 1n || header.size > 1n << 56n) throw badImage(path, `qcow image size ${header.size} is out of range`);
	if (header.clusterBits < 9 || header.clusterBits > 16) throw badImage(path, `qcow cluster size 2^${header.clusterBits} is not 512 B to 64 KiB`);
	if (header.l2Bits < 6 || header.l2Bits > 13) throw badImage(path, `qcow L2 table size 2^${header.l2Bits} entries is out of range`);
	if (header.cryptMethod !== 0) {
		throw new DmuError('DMU_ERR_UNSUPPORTED', `${path}: encrypted qcow images are not supported (convert with qemu-img first)`);
	}
	const shift = BigInt(header.clusterBits + header.l2Bits);
	const l1Size = (header.size + (1n << shift) - 1n) >> shift;
	if (l1Size > 1n << 24n || header.l1Offset + l1Size * 8n > fileSize) {
		throw badImage(path, `qcow L1 table (${l1Size} entries at ${header.l1Offset}) lies outside the file`);
	}
	const raw = await file.read(header.l1Offset, Number(l1Size) * 8, 'L1 table');
	const l1 = new BigUint64Array(Number(l1Size));
	for (let i = 0; i < l1.length; i++) l1[i] = raw.readBigUInt64BE(i * 8);
	let backingName: string | undefined;
	if (header.backingOffset !== 0n) {
		if (header.backingSize === 0 || header.backingSize > 1023 || header.backingOffset + BigInt(header.backingSize) > fileSize) {
			throw badImage(path, 'qcow backing file name is too long or lies outside the file');
		}
		backingName = (await file.read(header.backingOffset, header.backingSize, 'backing file name')).toString('utf8');
		if (backingName.includes('\0')) throw badImage(path, 'qcow backing file name contains a NUL byte');
	}
	return { header, l1, ...(backingName !== undefined ? { backingName } : {}), fileSize };
}

/** Every cluster an allocated L2 table covers, skipping absent tables. */
async function* tableClusters(img: QcowImage, meta: Meta) {
	const per = 1n << BigInt(meta.header.l2Bits);
	const cs = BigInt(img.blockSize);
	for (let i = 0; i < meta.l1.length; i++) {
		if (meta.l1[i] === 0n) continue;
		for (let c = BigInt(i) * per; c < BigInt(i + 1) * per && c * cs < img.virtualSize; c++) yield { c, l: await img.lookup(c) };
	}
}

export const plugin: Plugin = {
	name: 'qcow',

	probe(header) {
		return header.length >= 8 && header.readUInt32BE(0) === MAGIC && header.readUInt32BE(4) === 1;
	},

	async create(path, opts) {
		let size = opts.size;
		let backingName = '';
		if (opts.base) {
			const bp = resolve(opts.base);
			const img = await (await pluginFor(bp, opts.baseFormat)).open(bp, { readOnly: true, allowedRoots: [dirname(bp)] });
			size ??= img.virtualSize;
			await img.close();
			backingName = opts.base;
		}
		if (size === undefined || size <= 0n) throw new DmuError('DMU_ERR_USAGE', 'qcow: a size is needed to create an image');
		const cs = opts.blockSize ?? 4096;
		const clusterBits = Math.log2(cs);
		if (!Number.isInteger(clusterBits) || clusterBits < 9 || clusterBits > 16) {
			throw new DmuError('DMU_ERR_USAGE', `qcow: cluster size ${cs} must be a power of two from 512 B to 64 KiB`);
		}
		// One L2 table per cluster, as qemu does for 4 KiB clusters.
		const l2Bits = Math.min(13, Math.max(6, clusterBits - 3));
		const name = Buffer.from(backingName, 'utf8');
		if (name.length > 1023) throw new DmuError('DMU_ERR_USAGE', 'qcow: backing file name longer than 1023 bytes');
		const sectors = (size + 511n) / 512n;
		const l1Offset = BigInt((HEADER_SIZE + name.length + 7) & ~7);
		const shift = BigInt(clusterBits + l2Bits);
		const l1Size = ((sectors * 512n + (1n << shift) - 1n) >> shift);
		const header = serializeHeader({
			backingOffset: name.length ? BigInt(HEADER_SIZE) : 0n,
			backingSize: name.length,
			mtime: 0,
			size: sectors * 512n,
			clusterBits,
			l2Bits,
			cryptMethod: 0,
			l1Offset,
		});
		const out = Buffer.alloc(Number(l1Offset + ((l1Size * 8n + 511n) & ~511n)));
		header.copy(out, 0);
		name.copy(out, HEADER_SIZE);
		await writeFile(path, out);
	},

	async open(path, opts: OpenOptions = {}) {
		const writable = !opts.readOnly;
		const file = await ImageFile.open(path, writable);
		let backing: Backing | undefined;
		try {
			const meta = await readMeta(file);
			if (opts.base || meta.backingName) {
				backing = await Backing.open(path, opts.base ?? (meta.backingName as string), opts.baseFormat, opts, 1);
			}
			return new QcowImage({
				path,
				file,
				header: meta.header,
				l1: meta.l1,
				fileSize: meta.fileSize,
				writable,
				...(backing ? { backing } : {}),
				...(opts.scratch ? { scratch: opts.scratch } : {}),
			});
		} catch (e) {
			await backing?.close().catch(() => undefined);
			await file.close();
			throw e;
		}
	},

	async check(path, opts = {}): Promise<CheckResult> {
		const result: CheckResult = { corruptions: [], leaks: [], repaired: [] };
		const file = await ImageFile.open(path, false);
		try {
			const meta = await readMeta(file);
			const img = new QcowImage({ path, file, header: meta.header, l1: meta.l1, fileSize: meta.fileSize, writable: false });
			const seen = new Map<bigint, bigint>();
			const l2Bytes = BigInt((1 << meta.header.l2Bits) * 8);
			const metaEnd = meta.header.l1Offset + BigInt(meta.l1.length) * 8n;
			meta.l1.forEach((o, i) => {
				if (o !== 0n && (o < metaEnd || o + l2Bytes > meta.fileSize)) result.corruptions.push(`L2 table ${i} at ${o} overlaps the header or lies past the end`);
			});
			for await (const { c, l } of tableClusters(img, meta)) {
				if (l.kind === 'bad') result.corruptions.push(l.why);
				if (l.kind === 'data') {
					const other = seen.get(l.offset);
					if (other !== undefined) result.corruptions.push(`clusters ${other} and ${c} share offset ${l.offset}`);
					seen.set(l.offset, c);
					if (l.offset < metaEnd) result.corruptions.push(`cluster ${c} overlaps the header`);
				}
			}
			if (meta.backingName !== undefined) {
				await Backing.open(path, meta.backingName, undefined, { ...opts, readOnly: true }, 1).then(
					(b) => b.close(),
					(e) => {
						if (!isDmuError(e)) throw e;
						result.corruptions.push(e.message);
					},
				);
			}
		} catch (e) {
			if (!isDmuError(e)) throw e;
			result.corruptions.push(e.message);
		} finally {
			await file.close();
		}
		return result;
	},

	async info(path): Promise<ImageInfo> {
		const file = await ImageFile.open(path, false);
		try {
			const meta = await readMeta(file);
			const img = new QcowImage({ path, file, header: meta.header, l1: meta.l1, fileSize: meta.fileSize, writable: false });
			let allocated = 0n;
			let compressed = 0;
			for await (const { l } of tableClusters(img, meta)) {
				if (l.kind === 'data' || l.kind === 'compressed') allocated++;
				if (l.kind === 'compressed') compressed++;
			}
			const st = await file.fh.stat({ bigint: true });
			return {
				format: 'qcow',
				virtualSize: img.virtualSize,
				blockSize: img.blockSize,
				actualSize: st.blocks * 512n,
				allocatedBlocks: allocated,
				...(meta.backingName !== undefined ? { backing: { path: backingDisplayPath(path, meta.backingName) } } : {}),
				details: { clusterBits: meta.header.clusterBits, l2Bits: meta.header.l2Bits, compressedClusters: compressed },
			};
		} finally {
			await file.close();
		}
	},
};
