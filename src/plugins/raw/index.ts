/**
 * raw: the disk is the file (or block device) itself. Every block maps in
 * place, so a raw disk costs one request per 64 KiB block and nothing
 * after. A size that is not a multiple of 64 KiB gets smaller blocks (the
 * largest power of two dividing it): the kernel only takes mappings that
 * lie wholly inside the device, so there is no partial last block.
 * Sizes are whole 512-byte sectors (a trailing partial sector is not part
 * of the disk, as with a loop device; dmu convert copies it all the same,
 * padded to a sector, as qemu-img does: src/convert/source.ts).
 */
import { open, stat, truncate } from 'node:fs/promises';
import { DmuError } from '../../errors.js';
import type { CheckResult, Image, ImageInfo, MapDecision, MapRequest, OpenOptions, Plugin } from '../types.js';
import { deviceSize, fitBlock } from './io.js';

const BLOCK = 64 * 1024;

class RawImage implements Image {
	readonly format = 'raw';
	readonly blockSize: number;
	readonly devices;
	readonly capabilities;
	#spb: bigint;
	constructor(
		readonly path: string,
		readonly virtualSize: bigint,
		readonly writable: boolean,
	) {
		this.blockSize = fitBlock(virtualSize, BLOCK);
		this.#spb = BigInt(this.blockSize / 512);
		this.devices = [{ path, writable }];
		this.capabilities = { write: writable, flush: false, scratch: false, linear: true, concurrentMap: true };
	}
	async map(req: MapRequest): Promise<MapDecision> {
		if (req.block < 0n || req.block * BigInt(this.blockSize) >= this.virtualSize) return { kind: 'error', errno: 5 };
		if (req.write && !this.writable) return { kind: 'error', errno: 30 }; // EROFS
		// Identity: every block from here to the end has the same answer.
		const blocks = (this.virtualSize + BigInt(this.blockSize) - 1n) / BigInt(this.blockSize);
		const left = blocks - req.block;
		const max = BigInt(req.maxRun ?? 1);
		const run = Number(left < max ? left : max);
		return { kind: 'map', dev: 0, sector: req.block * this.#spb, writable: this.writable, durable: true, run };
	}
	async commit(): Promise<void> {}
	async close(): Promise<void> {}
}

export const plugin: Plugin = {
	name: 'raw',
	// raw has no header: the registry tries it last, for anything.
	probe: () => true,

	async create(path, opts) {
		if (opts.base) throw new DmuError('DMU_ERR_UNSUPPORTED', 'raw images have no backing file');
		if (opts.size === undefined) throw new DmuError('DMU_ERR_USAGE', 'raw: a size is needed to create an image');
		const st = await stat(path).catch(() => undefined);
		if (st?.isBlockDevice()) {
			const have = await deviceSize(path);
			if (have < opts.size) throw new DmuError('DMU_ERR_USAGE', `${path}: device holds ${have} bytes, ${opts.size} needed`);
			return;
		}
		// A sparse file: unwritten blocks cost nothing and read as zeros.
		await (await open(path, 'w')).close();
		await truncate(path, Number(opts.size));
	},

	async open(path, opts: OpenOptions = {}) {
		const size = await deviceSize(path);
		if (size < 512n) throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: a raw disk needs at least one 512-byte sector`);
		const writable = !opts.readOnly;
		// Opening checks access now rather than at the first write.
		await (await open(path, writable ? 'r+' : 'r').catch((e: NodeJS.ErrnoException) => {
			throw new DmuError('DMU_ERR_OPEN', `cannot open ${path}: ${e.code ?? e.message}`);
		})).close();
		return new RawImage(path, size & ~511n, writable);
	},

	async check(path): Promise<CheckResult> {
		await deviceSize(path);
		return { corruptions: [], leaks: [], repaired: [] };
	},

	async info(path): Promise<ImageInfo> {
		const size = await deviceSize(path);
		const st = await stat(path, { bigint: true });
		const actual = st.isBlockDevice() ? size : st.blocks * 512n;
		return {
			format: 'raw',
			virtualSize: size & ~511n,
			blockSize: fitBlock(size & ~511n, BLOCK),
			actualSize: actual,
			allocatedBlocks: (actual + BigInt(BLOCK) - 1n) / BigInt(BLOCK),
			details: {},
		};
	},
};
