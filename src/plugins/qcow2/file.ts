/**
 * The image file as metadata code sees it: every read is checked against
 * the file's size (a corrupt pointer becomes a DmuError, never a read of
 * garbage past the end), and writes keep the known size current.
 */
import { type FileHandle, open } from 'node:fs/promises';
import { DmuError } from '../../errors.js';
import { bad } from './layout.js';

/**
 * How far ahead of the last allocation the file is grown: one ftruncate per
 * cluster was ~7% of a conversion to qcow2. close() trims the file back.
 */
const GROW_AHEAD = 64 * 1024 * 1024;

export class ImageFile {
	#fh: FileHandle;
	/** Bytes in use: allocated clusters end here (reads are checked against it). */
	#size: number;
	/** Bytes the file really has (>= #size while grown ahead). */
	#physical: number;

	private constructor(
		readonly path: string,
		fh: FileHandle,
		size: number,
		readonly writable: boolean,
	) {
		this.#fh = fh;
		this.#size = size;
		this.#physical = size;
	}

	static async open(path: string, writable: boolean): Promise<ImageFile> {
		let fh: FileHandle;
		try {
			fh = await open(path, writable ? 'r+' : 'r');
		} catch (e) {
			throw new DmuError('DMU_ERR_OPEN', `cannot open ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
		}
		const st = await fh.stat();
		return new ImageFile(path, fh, st.size, writable);
	}

	get size(): number {
		return this.#size;
	}

	/** Read exactly `len` bytes at `off`; anything past the end is corruption. */
	async read(off: number, len: number, what: string): Promise<Buffer> {
		if (!Number.isSafeInteger(off) || off < 0 || len < 0 || off + len > this.#size) {
			throw bad(this.path, `${what} (${off}+${len}) lies beyond the end of the file (${this.#size})`);
		}
		const buf = Buffer.alloc(len);
		let done = 0;
		while (done < len) {
			const { bytesRead } = await this.#fh.read(buf, done, len - done, off + done);
			if (bytesRead === 0) throw bad(this.path, `${what}: short read at ${off + done}`);
			done += bytesRead;
		}
		return buf;
	}

	/** Read up to `len` bytes, zero-filling what lies past the end of the file. */
	async readPadded(off: number, len: number): Promise<Buffer> {
		const buf = Buffer.alloc(len);
		const avail = Math.max(0, Math.min(len, this.#size - off));
		let done = 0;
		while (done < avail) {
			const { bytesRead } = await this.#fh.read(buf, done, avail - done, off + done);
			if (bytesRead === 0) break;
			done += bytesRead;
		}
		return buf;
	}

	async write(off: number, data: Buffer): Promise<void> {
		if (!this.writable) throw new DmuError('DMU_ERR_READ_ONLY', `qcow2: ${this.path} is open read-only`);
		let done = 0;
		while (done < data.length) {
			const { bytesWritten } = await this.#fh.write(data, done, data.length - done, off + done);
			done += bytesWritten;
		}
		this.#size = Math.max(this.#size, off + data.length);
		this.#physical = Math.max(this.#physical, off + data.length);
	}

	/**
	 * Grow the (sparse) file so freshly allocated clusters lie inside it.
	 * The file grows in steps (sparse, so free); a crash can leave the
	 * step's unreferenced tail, which holds no clusters and is harmless.
	 */
	async growTo(size: number): Promise<void> {
		if (size <= this.#size) return;
		if (size > this.#physical) {
			const ahead = size + Math.min(GROW_AHEAD, size);
			await this.#fh.truncate(ahead);
			this.#physical = ahead;
		}
		this.#size = size;
	}

	async sync(): Promise<void> {
		await this.#fh.datasync();
	}

	async close(): Promise<void> {
		try {
			if (this.writable && this.#physical > this.#size) await this.#fh.truncate(this.#size);
		} finally {
			await this.#fh.close();
		}
	}
}
