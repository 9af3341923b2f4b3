/**
 * dscow check and info.
 *
 * Corruptions: a header that fails validation, bits set past the last
 * block, allocated blocks past the end of the file, a missing or changed
 * base. Leaks: data stored for blocks whose bit is clear (what a crash
 * between a write and its commit leaves behind). Finding leaks reads only
 * unallocated blocks, and only when the file occupies more space than its
 * metadata and allocated blocks can explain, so a clean check is cheap.
 * An image on a block device has no holes: leaks cannot be told from the
 * device's old contents there, and are not looked for.
 */
import { open, stat } from 'node:fs/promises';
import { execa } from 'execa';
import { DmuError, isDmuError } from '../../errors.js';
import type { CheckResult, ImageInfo, OpenOptions } from '../types.js';
import { verify } from './base.js';
import type { Bitmap } from './bitmap.js';
import { dataEnd, FLAG_CLEAN, HEADER_SIZE, hasMagic } from './layout.js';
import { load, resolveBase } from './image.js';

const isZero = (b: Buffer) => {
	for (let i = 0; i < b.length; i += 8) if (b.readBigUInt64LE(i) !== 0n) return false;
	return true;
};

export async function check(path: string, opts: { repair?: 'leaks' | 'all' } & OpenOptions = {}): Promise<CheckResult> {
	const result: CheckResult = { corruptions: [], leaks: [], repaired: [] };
	const fh = await open(path, opts.repair ? 'r+' : 'r').catch((e: NodeJS.ErrnoException) => {
		throw new DmuError('DMU_ERR_OPEN', `cannot open ${path}: ${e.code ?? e.message}`);
	});
	try {
		const head = Buffer.alloc(HEADER_SIZE);
		await fh.read(head, 0, HEADER_SIZE, 0);
		if (!hasMagic(head)) throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: not a dscow image`);
		let loaded: Awaited<ReturnType<typeof load>>;
		try {
			loaded = await load(fh, path);
		} catch (e) {
			if (!isDmuError(e)) throw e;
			result.corruptions.push(e.message);
			return result; // nothing else can be trusted
		}
		const { header, bitmap, fileSize } = loaded;
		const bs = BigInt(header.blockSize);

		const stray = bitmap.strayBits();
		if (stray) {
			if (opts.repair === 'all') {
				const last = bitmap.words.length - 1;
				bitmap.words[last] = (bitmap.words[last]! ^ ((stray << Number(header.blockCount % 32n)) >>> 0)) >>> 0;
				await fh.write(bitmap.encode(last, 1), 0, 4, Number(header.bitmapOffset) + last * 4);
				await fh.datasync();
				result.repaired.push(`cleared bits past the last block (0x${stray.toString(16)})`);
			} else result.corruptions.push(`bitmap has bits set past block ${header.blockCount - 1n}`);
		}

		if (fileSize < dataEnd(header)) {
			// The file must reach the last block; blocks past its end have lost data.
			const firstMissing = fileSize <= header.firstBlock ? 0n : (fileSize - header.firstBlock + bs - 1n) / bs;
			let lost = 0n;
			for (let b = firstMissing; b < header.blockCount; b++) if (bitmap.get(b)) lost++;
			if (lost > 0n) result.corruptions.push(`${lost} allocated blocks lie past the end of the file (${fileSize} bytes)`);
		}

		try {
			const base = resolveBase(path, header, opts);
			if (base) await verify(base, header.base, path);
		} catch (e) {
			if (!isDmuError(e)) throw e;
			result.corruptions.push(e.message);
		}

		await findLeaks(fh, path, header.firstBlock, bs, header.blockCount, bitmap, fileSize, result, opts.repair);
		return result;
	} finally {
		await fh.close();
	}
}

async function findLeaks(
	fh: Awaited<ReturnType<typeof open>>,
	path: string,
	firstBlock: bigint,
	bs: bigint,
	blockCount: bigint,
	bitmap: Bitmap,
	fileSize: bigint,
	result: CheckResult,
	repair: 'leaks' | 'all' | undefined,
): Promise<void> {
	const st = await fh.stat({ bigint: true });
	// A device has no holes to tell orphaned data by: every block holds
	// something. Its unallocated blocks are never read, so nothing to find.
	if (st.isBlockDevice()) return;
	const used = st.blocks * 512n;
	// One extra file-system block of slack for the partially used bitmap page.
	if (used <= firstBlock + bitmap.count() * bs + 4096n) return;
	const buf = Buffer.alloc(Number(bs));
	for (let b = 0n; b < blockCount; b++) {
		if (bitmap.get(b)) continue;
		const off = firstBlock + b * bs;
		if (off >= fileSize) break;
		const { bytesRead } = await fh.read(buf, 0, buf.length, Number(off));
		if (isZero(buf.subarray(0, bytesRead))) continue;
		if (repair) {
			// Punch the orphaned data out; the file keeps its size.
			await execa('fallocate', ['--punch-hole', '--keep-size', '--offset', String(off), '--length', String(bs), path]);
			result.repaired.push(`block ${b}: freed orphaned data`);
		} else result.leaks.push(`block ${b}: data stored but the block is not allocated`);
	}
}

export async function info(path: string, _opts: OpenOptions = {}): Promise<ImageInfo> {
	const fh = await open(path, 'r').catch((e: NodeJS.ErrnoException) => {
		throw new DmuError('DMU_ERR_OPEN', `cannot open ${path}: ${e.code ?? e.message}`);
	});
	try {
		const { header, bitmap, fileSize, blockDevice } = await load(fh, path);
		const st = await stat(path, { bigint: true });
		const clean = (header.flags & FLAG_CLEAN) !== 0;
		const i: ImageInfo = {
			format: 'dscow',
			virtualSize: header.virtualSize,
			blockSize: header.blockSize,
			// A device's space is all taken, written or not.
			actualSize: blockDevice ? fileSize : st.blocks * 512n,
			allocatedBlocks: bitmap.count(),
			dirty: !clean,
			details: {
				version: header.version,
				firstBlock: Number(header.firstBlock),
				blocks: Number(header.blockCount),
				bitmapCount: Number(header.bitmapWords),
				cleanShutdown: clean,
			},
		};
		if (header.basePath) {
			i.backing = { path: header.basePath, format: 'raw' };
			i.details.baseSize = Number(header.base.size);
			i.details.baseMtimeNs = header.base.mtimeNs.toString();
			i.details.baseHash = header.base.hash.toString('hex');
		}
		return i;
	} finally {
		await fh.close();
	}
}
