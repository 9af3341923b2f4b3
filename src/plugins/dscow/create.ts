/**
 * Creating a dscow image: header, an all-clear bitmap, and a sparse file
 * extended to the end of the last block (costs no space until written).
 */
import { open, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { DmuError } from '../../errors.js';
import type { CreateOptions } from '../types.js';
import { identify } from './base.js';
import { DEFAULT_BLOCK, encodeHeader, FLAG_CLEAN, geometry, type Header, VERSION } from './layout.js';

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

	let fh: import('node:fs/promises').FileHandle;
	try {
		fh = await open(path, 'wx');
	} catch (e) {
		const code = (e as NodeJS.ErrnoException).code;
		throw new DmuError('DMU_ERR_CREATE', `cannot create ${path}: ${code === 'EEXIST' ? 'it already exists' : (code ?? (e as Error).message)}`);
	}
	try {
		await fh.write(buf, 0, buf.length, 0);
		// The bitmap regions are written (zeros) so it is never a hole a later
		// SEEK_DATA-based copy could drop.
		const bitmaps = Number(2n * g.bitmapWords * 4n);
		await fh.write(Buffer.alloc(bitmaps), 0, bitmaps, Number(g.bitmapOffset)); // bitmap + live bitmap
		await fh.truncate(Number(g.firstBlock + g.blockCount * BigInt(blockSize)));
		await fh.sync();
		await fh.close();
	} catch (e) {
		await fh.close().catch(() => undefined);
		await rm(path, { force: true });
		throw new DmuError('DMU_ERR_CREATE', `cannot create ${path}: ${(e as Error).message}`);
	}
	return header;
}
