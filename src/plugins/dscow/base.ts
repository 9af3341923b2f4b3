/**
 * The base image's identity: a cheap but real check that the base a dscow
 * image was made against is still the same. A changed base silently
 * corrupts every block not yet copied, so open refuses any mismatch.
 *
 * Identity = size + mtime (regular files only: a block device node's mtime
 * says nothing about its contents) + SHA-256 over the size and the first and
 * last 64 KiB. Reading 128 KiB costs nothing next to attaching a disk.
 */
import { createHash } from 'node:crypto';
import { type FileHandle, open, stat } from 'node:fs/promises';
import { DmuError } from '../../errors.js';
import { blockDeviceSize } from '../raw/io.js';
import type { BaseIdentity } from './layout.js';

const EDGE = 64 * 1024;

export interface BaseInfo {
	identity: BaseIdentity;
	blockDevice: boolean;
}

async function readAt(fh: FileHandle, len: number, pos: bigint): Promise<Buffer> {
	const b = Buffer.alloc(len);
	let done = 0;
	while (done < len) {
		const { bytesRead } = await fh.read(b, done, len - done, Number(pos) + done);
		if (bytesRead === 0) break;
		done += bytesRead;
	}
	return b.subarray(0, done);
}

/** Measure a base. Throws one line when it is missing or not a file/device. */
export async function identify(path: string): Promise<BaseInfo> {
	let st: import('node:fs').BigIntStats;
	try {
		st = await stat(path, { bigint: true });
	} catch (e) {
		throw new DmuError('DMU_ERR_BASE', `base ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : (e as Error).message}`);
	}
	const blockDevice = st.isBlockDevice();
	if (!blockDevice && !st.isFile()) throw new DmuError('DMU_ERR_BASE', `base ${path}: not a regular file or block device`);
	const size = blockDevice
		? await blockDeviceSize(st.rdev, path).catch((e: Error) => {
				throw new DmuError('DMU_ERR_BASE', `base ${e.message}`);
			})
		: st.size;
	if (size === 0n) throw new DmuError('DMU_ERR_BASE', `base ${path}: is empty`);
	let fh: FileHandle;
	try {
		fh = await open(path, 'r');
	} catch (e) {
		throw new DmuError('DMU_ERR_BASE', `base ${path}: cannot open: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
	}
	try {
		const h = createHash('sha256');
		const sz = Buffer.alloc(8);
		sz.writeBigUInt64LE(size);
		h.update(sz);
		h.update(await readAt(fh, EDGE, 0n));
		const tail = size > BigInt(EDGE) ? size - BigInt(EDGE) : 0n;
		h.update(await readAt(fh, EDGE, tail));
		return { identity: { size, mtimeNs: blockDevice ? 0n : st.mtimeNs, hash: h.digest() }, blockDevice };
	} finally {
		await fh.close();
	}
}

/** Refuse a base that is not the one the image was made against. */
export async function verify(path: string, expected: BaseIdentity, image: string): Promise<BaseInfo> {
	const got = await identify(path);
	const why =
		got.identity.size !== expected.size
			? `its size is ${got.identity.size}, the image expects ${expected.size}`
			: !got.identity.hash.equals(expected.hash)
				? 'its contents differ from when the image was created'
				: expected.mtimeNs !== 0n && got.identity.mtimeNs !== expected.mtimeNs
					? 'it was modified after the image was created (mtime changed)'
					: undefined;
	if (why) throw new DmuError('DMU_ERR_BASE_CHANGED', `${image}: base ${path} has changed: ${why}; refusing to use it`);
	return got;
}
