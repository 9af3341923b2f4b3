/**
 * Positional file access for format plugins: metadata reads that must be
 * whole (a short read means a truncated, corrupt image), writes, sizes.
 * Shared by raw, vhd, vmdk and qcow (and any plugin that wants it).
 */
import { type FileHandle, open, readFile, stat } from 'node:fs/promises';
import { execa } from 'execa';
import { DmuError } from '../../errors.js';

/** Bytes of a regular file or a block device (sysfs knows a device's size). */
export async function deviceSize(path: string): Promise<bigint> {
	const st = await stat(path, { bigint: true }).catch((e: NodeJS.ErrnoException) => {
		throw new DmuError('DMU_ERR_OPEN', `cannot open ${path}: ${e.code ?? e.message}`);
	});
	if (!st.isBlockDevice()) return st.size;
	return blockDeviceSize(st.rdev, path);
}

/** Bytes of the block device `rdev` (stat says 0): /sys/dev/block/MAJ:MIN/size counts sectors. */
export async function blockDeviceSize(rdev: bigint, path: string): Promise<bigint> {
	// glibc's gnu_dev_major/minor: the split of a 64-bit dev_t.
	const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
	const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
	try {
		return BigInt((await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim()) * 512n;
	} catch {
		throw new DmuError('DMU_ERR_OPEN', `${path}: cannot read the size of block device ${major}:${minor}`);
	}
}

/**
 * Zero `length` bytes of block device `path` at `offset` with BLKZEROOUT
 * (through blkdiscard; the kernel uses WRITE ZEROES where the device has
 * it). Unlike a write through a file handle, it also drops the range from
 * the device's page cache, which the kernel's own bios to the device would
 * otherwise leave stale for later buffered readers.
 */
export async function zeroOut(path: string, offset: bigint, length: bigint, o: { inUse?: boolean } = {}): Promise<void> {
	// blkdiscard opens the device O_EXCL unless forced; a dm table serving the image holds it so.
	const force = o.inUse ? ['--force'] : [];
	const r = await execa('blkdiscard', [...force, '--zeroout', '--offset', String(offset), '--length', String(length), path], { reject: false });
	if (r.exitCode !== 0) {
		throw new DmuError('DMU_ERR_IO', `cannot zero ${length} bytes at ${offset} of ${path}: ${r.stderr.trim() || `blkdiscard exit ${r.exitCode}`}`);
	}
}

export class ImageFile {
	private constructor(
		readonly path: string,
		readonly fh: FileHandle,
		readonly writable: boolean,
	) {}

	static async open(path: string, writable: boolean): Promise<ImageFile> {
		let fh: FileHandle;
		try {
			fh = await open(path, writable ? 'r+' : 'r');
		} catch (e) {
			throw new DmuError('DMU_ERR_OPEN', `cannot open ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
		}
		const st = await fh.stat();
		if (!st.isFile() && !st.isBlockDevice()) {
			await fh.close();
			throw new DmuError('DMU_ERR_OPEN', `cannot open ${path}: not a regular file or block device`);
		}
		return new ImageFile(path, fh, writable);
	}

	async size(): Promise<bigint> {
		const st = await this.fh.stat({ bigint: true });
		return st.isBlockDevice() ? deviceSize(this.path) : st.size;
	}

	/** Exactly `len` bytes at `pos`; a short read is a corrupt image. */
	async read(pos: bigint | number, len: number, what: string): Promise<Buffer> {
		const buf = Buffer.alloc(len);
		const p = Number(pos);
		let done = 0;
		while (done < len) {
			const { bytesRead } = await this.fh.read(buf, done, len - done, p + done);
			if (bytesRead === 0) {
				throw new DmuError('DMU_ERR_BAD_IMAGE', `${this.path}: ${what} at byte ${p} lies past the end of the file`);
			}
			done += bytesRead;
		}
		return buf;
	}

	/** Like read() but bytes past the end read as zeros (data, not metadata). */
	async readPadded(pos: bigint | number, len: number): Promise<Buffer> {
		const buf = Buffer.alloc(len);
		const p = Number(pos);
		let done = 0;
		while (done < len) {
			const { bytesRead } = await this.fh.read(buf, done, len - done, p + done);
			if (bytesRead === 0) break;
			done += bytesRead;
		}
		return buf;
	}

	/**
	 * Read into `buf[at, at + len)` from `pos` without allocating; stops at
	 * the end of the file and returns the bytes read (callers that want
	 * zeros past the end pre-fill `buf`).
	 */
	async readInto(buf: Buffer, at: number, pos: bigint | number, len: number): Promise<number> {
		const p = Number(pos);
		let done = 0;
		while (done < len) {
			const { bytesRead } = await this.fh.read(buf, at + done, len - done, p + done);
			if (bytesRead === 0) break;
			done += bytesRead;
		}
		return done;
	}

	async write(pos: bigint | number, data: Buffer): Promise<void> {
		let done = 0;
		const p = Number(pos);
		while (done < data.length) {
			const { bytesWritten } = await this.fh.write(data, done, data.length - done, p + done);
			done += bytesWritten;
		}
	}

	async truncate(len: bigint | number): Promise<void> {
		await this.fh.truncate(Number(len));
	}

	async sync(): Promise<void> {
		await this.fh.datasync();
	}

	async close(): Promise<void> {
		await this.fh.close();
	}
}

/** Refuse a number that does not fit what we can address safely. */
export function safeNumber(v: bigint, what: string, path: string): number {
	if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) {
		throw new DmuError('DMU_ERR_BAD_IMAGE', `${path}: ${what} ${v} is out of range`);
	}
	return Number(v);
}

export const badImage = (path: string, msg: string): DmuError => new DmuError('DMU_ERR_BAD_IMAGE', `${path}: ${msg}`);

/**
 * The largest power of two <= max dividing `size` (512 at least): the
 * kernel target only accepts mappings that lie wholly inside a device, so
 * formats whose data ends with the file (raw, fixed VHD, flat extents)
 * must not have a partial last block.
 */
export function fitBlock(size: bigint, max: number): number {
	let bs = max;
	while (bs > 512 && size % BigInt(bs) !== 0n) bs /= 2;
	return bs;
}
