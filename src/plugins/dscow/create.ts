/**
 * Creating a dscow image: header, an all-clear bitmap, and a sparse file
 * extended to the end of the last block (costs no space until written).
 *
 * Or on a block device (an LVM volume, a partition) big enough for every
 * block: the data path then has no loop device and no file system under
 * it. Its old contents stay where no block is allocated; the image never
 * reads them (see DscowImage.#zeroBlock).
 */
import { type FileHandle, open, rm, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { DmuError } from '../../errors.js';
import type { CreateOptions } from '../types.js';
import { blockDeviceSize } from '../raw/io.js';
import { identify } from './base.js';
import { DEFAULT_BLOCK, dataEnd, encodeHeader, FLAG_CLEAN, geometry, type Header, hasMagic, HEADER_SIZE, VERSION } from './layout.js';

export async function create(path: string, opts: CreateOptions): Promise<Header> {
	const blockSize = opts.blockSize ?? DEFAULT_BLOCK;
	for (const k of Object.keys(opts.options ?? {})) {
		throw new DmuError('DMU_ERR_BAD_OPTION', `dscow has no option "${k}" (it takes a base, a size and a block size)`);
	}
	if (opts.baseFormat && opts.baseFormat !== 'raw') {
		throw new DmuError('DMU_ERR_BAD_OPTION', `a dscow base is a raw file or block device, not ${opts.baseFormat}`);
	}
	const basePath = opts.base ? resolve(opts.base) : '';
	const base = basePath ? (await identify(basePath)).identity : { size: 0n, mtimeNs: 0n, hash: Buffer.alloc(32) };
	// A disk has whole sectors: a base ending mid-sector reads zeros after its end.
	let size = opts.size ?? base.size;
	if (size === 0n) throw new DmuError('DMU_ERR_BAD_OPTION', 'dscow: give a base or a size');
	if (basePath && size < base.size) {
		throw new DmuError('DMU_ERR_BAD_OPTION', `dscow: size ${size} is smaller than the base (${base.size} bytes)`);
	}
	size = ((size + 511n) / 512n) * 512n;
	const g = geometry(size, blockSize);
	const header: Header = { version: VERSION, flags: FLAG_CLEAN, virtualSize: size, blockSize, ...g, basePath, base };
	const buf = encodeHeader(header);

	const end = dataEnd(header);
	const onDevice = await stat(path).then((st) => st.isBlockDevice(), () => false);
	const fh = onDevice ? await openDevice(path, end) : await openNewFile(path);
	try {
		await fh.write(buf, 0, buf.length, 0);
		// The bitmap regions are written (zeros) so it is never a hole a later
		// SEEK_DATA-based copy could drop.
		const bitmaps = Number(2n * g.bitmapWords * 4n);
		await fh.write(Buffer.alloc(bitmaps), 0, bitmaps, Number(g.bitmapOffset)); // bitmap + live bitmap
		if (!onDevice) await fh.truncate(Number(end));
		await fh.sync();
		await fh.close();
	} catch (e) {
		await fh.close().catch(() => undefined);
		if (!onDevice) await rm(path, { force: true });
		throw new DmuError('DMU_ERR_CREATE', `cannot create ${path}: ${(e as Error).message}`);
	}
	return header;
}

async function openNewFile(path: string): Promise<FileHandle> {
	try {
		return await open(path, 'wx');
	} catch (e) {
		const code = (e as NodeJS.ErrnoException).code;
		throw new DmuError('DMU_ERR_CREATE', `cannot create ${path}: ${code === 'EEXIST' ? 'it already exists' : (code ?? (e as Error).message)}`);
	}
}

/**
 * A device must hold every block, and must not hold a dscow image already:
 * writing a new header over one would drop every block it stores.
 */
async function openDevice(path: string, need: bigint): Promise<FileHandle> {
	let fh: FileHandle;
	try {
		fh = await open(path, 'r+');
	} catch (e) {
		throw new DmuError('DMU_ERR_CREATE', `cannot open ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
	}
	try {
		const st = await fh.stat({ bigint: true });
		const size = await blockDeviceSize(st.rdev, path);
		if (size < need) {
			throw new DmuError('DMU_ERR_CREATE', `cannot create ${path}: the device holds ${size} bytes, the image needs ${need} (header, bitmaps and every block)`);
		}
		const head = Buffer.alloc(HEADER_SIZE);
		await fh.read(head, 0, HEADER_SIZE, 0);
		if (hasMagic(head)) {
			throw new DmuError('DMU_ERR_CREATE', `cannot create ${path}: it already holds a dscow image (to reuse the device, clear its first 4 KiB first)`);
		}
		return fh;
	} catch (e) {
		await fh.close();
		throw e;
	}
}
