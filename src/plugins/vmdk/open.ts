/**
 * Opening a VMDK: a monolithic sparse file (descriptor embedded), or a
 * text descriptor naming extent files (monolithicFlat, twoGbMaxExtent*,
 * vmfs). Extent files and parents must lie under the image's directory or
 * an allowed root, like backing files.
 */
import { DmuError } from '../../errors.js';
import { Backing, resolveBackingPath } from '../raw/backing.js';
import { ImageFile } from '../raw/io.js';
import type { ImageDevice, OpenOptions } from '../types.js';
import { type Extent, VmdkImage } from './image.js';
import { type Descriptor, MAGIC, parseDescriptor } from './layout.js';
import { SparseExtent } from './sparse.js';

const FLAT_BLOCK = 64 * 1024;
const MAX_DESCRIPTOR = 64 * 1024;

export interface Opened {
	desc?: Descriptor;
	extents: Extent[];
	devices: ImageDevice[];
	files: ImageFile[];
	blockSize: number;
	descriptorAt?: { file: ImageFile; offset: bigint; space: number; text: string };
}

function descriptorOf(text: string, path: string): Descriptor {
	const d = parseDescriptor(text);
	if ('error' in d) throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: VMDK descriptor: ${d.error}`);
	return d;
}

/** Everything but the parent: the extents and their files. */
export async function openExtents(path: string, writable: boolean, opts: OpenOptions): Promise<Opened> {
	const file = await ImageFile.open(path, writable);
	const files = [file];
	try {
		const size = await file.size();
		const head = await file.readPadded(0, 512);
		if (head.readUInt32LE(0) === MAGIC) {
			const sp = await SparseExtent.open(file);
			const text = await sp.descriptor();
			const desc = text ? descriptorOf(text, path) : undefined;
			const extent: Extent = { start: 0n, size: sp.header.capacity * 512n, type: 'sparse', dev: 0, offset: 0n, sparse: sp, writable: true };
			return {
				...(desc ? { desc } : {}),
				extents: [extent],
				devices: [{ path, writable }],
				files,
				blockSize: sp.grainBytes,
				...(text
					? { descriptorAt: { file, offset: sp.header.descriptorOffset * 512n, space: Number(sp.header.descriptorSize) * 512, text } }
					: {}),
			};
		}
		if (size > BigInt(MAX_DESCRIPTOR)) throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: not a VMDK (no sparse header, too big for a descriptor)`);
		const text = (await file.read(0, Number(size), 'VMDK descriptor')).toString('latin1');
		if (!text.includes('# Disk DescriptorFile') && !/^\s*createType\s*=/m.test(text)) {
			throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: not a VMDK (no sparse header, no descriptor)`);
		}
		const desc = descriptorOf(text, path);
		if (desc.extents.length === 0) throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: VMDK descriptor lists no extents`);
		const devices: ImageDevice[] = [{ path, writable }];
		const extents: Extent[] = [];
		const devOf = new Map<string, number>();
		const fileOf = new Map<string, ImageFile>();
		let start = 0n;
		let grain = 0;
		for (const line of desc.extents) {
			const bytes = line.sectors * 512n;
			const ro = line.access !== 'RW';
			if (line.access === 'NOACCESS') throw new DmuError('DMU_ERR_UNSUPPORTED', `${path}: VMDK extent with NOACCESS`);
			if (line.type === 'ZERO') {
				extents.push({ start, size: bytes, type: 'zero', dev: -1, offset: 0n, writable: false });
				start += bytes;
				continue;
			}
			const real = await resolveBackingPath(path, line.file as string, opts);
			let dev = devOf.get(real);
			const ef = dev === undefined ? await ImageFile.open(real, writable && !ro) : undefined;
			if (ef) {
				files.push(ef);
				dev = devices.length;
				devOf.set(real, dev);
				fileOf.set(real, ef);
				devices.push({ path: real, writable: writable && !ro });
			}
			if (line.type === 'FLAT' || line.type === 'VMFS') {
				const have = await (fileOf.get(real) as ImageFile).size();
				if ((line.offset + line.sectors) * 512n > have) {
					throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: flat extent ${line.file} is shorter than the ${line.sectors} sectors described`);
				}
				extents.push({ start, size: bytes, type: 'flat', dev: dev as number, offset: line.offset * 512n, writable: !ro });
			} else {
				if (!ef) throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: sparse extent ${line.file} listed twice`);
				const sp = await SparseExtent.open(ef);
				if (sp.header.capacity < line.sectors) {
					throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: sparse extent ${line.file} holds fewer sectors than described`);
				}
				if (grain && grain !== sp.grainBytes) {
					throw new DmuError('DMU_ERR_UNSUPPORTED', `${path}: sparse extents with different grain sizes`);
				}
				grain = sp.grainBytes;
				extents.push({ start, size: bytes, type: 'sparse', dev: dev as number, offset: 0n, sparse: sp, writable: !ro });
			}
			start += bytes;
		}
		if (start === 0n) throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: VMDK of zero sectors`);
		// A block must never straddle two extents.
		let bs = grain || FLAT_BLOCK;
		const boundaries = extents.slice(0, -1).map((e) => e.start + e.size);
		// A flat last extent must not end inside a block either: mappings lie
		// wholly inside the file.
		const lastExt = extents[extents.length - 1];
		if (lastExt?.type === 'flat') boundaries.push(lastExt.start + lastExt.size);
		while (bs > 512 && boundaries.some((b) => b % BigInt(bs) !== 0n)) bs /= 2;
		if (grain && bs !== grain) throw new DmuError('DMU_ERR_UNSUPPORTED', `${path}: extent boundaries are not multiples of the grain size`);
		return { desc, extents, devices, files, blockSize: bs, descriptorAt: { file, offset: 0n, space: Number.MAX_SAFE_INTEGER, text } };
	} catch (e) {
		for (const f of files) await f.close().catch(() => undefined);
		throw e;
	}
}

export async function openVmdk(path: string, opts: OpenOptions = {}): Promise<VmdkImage> {
	let writable = !opts.readOnly;
	const o = await openExtents(path, writable, opts);
	let backing: Backing | undefined;
	try {
		if (o.extents.some((e) => e.sparse?.compressed)) {
			if (writable) {
				throw new DmuError(
					'DMU_ERR_READ_ONLY',
					`${path}: compressed (streamOptimized) VMDKs are read-only in dmu; open it read-only or convert it (dmu convert -O vmdk)`,
				);
			}
			writable = false;
		}
		const d = o.desc;
		if (opts.base || (d && d.parentCid !== 0xffffffff && d.parentHint)) {
			backing = await Backing.open(path, opts.base ?? (d?.parentHint as string), opts.baseFormat, opts, o.devices.length);
		}
		return new VmdkImage({
			path,
			createType: d?.createType ?? 'monolithicSparse',
			cid: d?.cid ?? 0,
			extents: o.extents,
			devices: o.devices,
			blockSize: o.blockSize,
			writable,
			...(backing ? { backing } : {}),
			...(opts.scratch ? { scratch: opts.scratch } : {}),
			...(o.descriptorAt ? { descriptor: o.descriptorAt } : {}),
			files: o.files,
		});
	} catch (e) {
		await backing?.close().catch(() => undefined);
		for (const f of o.files) await f.close().catch(() => undefined);
		throw e;
	}
}
