/**
 * The scratch device: a sparse file, attached as one more loop device,
 * where plugins put data that cannot be mapped in place (the partial last
 * block of a dscow base, compressed clusters). Slots are reused round-robin:
 * a temporary mapping is served at once, long before its slot comes round
 * again; data mapped permanently must be put once and cached by the plugin.
 * Cost: slots * blockSize of disk at most (256 MiB by default).
 */
import { type FileHandle, open, rm } from 'node:fs/promises';
import type { ScratchArea } from '../plugins/types.js';

const SCRATCH_BYTES = 256 * 1024 * 1024;

export class ScratchFile implements ScratchArea {
	#fh: FileHandle | undefined;
	#next = 0;
	#dev = -1;
	readonly slots: number;

	constructor(
		readonly path: string,
		readonly slotSize: number,
	) {
		this.slots = Math.max(64, Math.floor(SCRATCH_BYTES / slotSize));
	}

	get dev(): number {
		return this.#dev;
	}

	/** Known once the image has said how many devices it has. */
	setDev(dev: number): void {
		this.#dev = dev;
	}

	get size(): number {
		return this.slots * this.slotSize;
	}

	/** Create (or, on takeover, reopen) the backing file at its full sparse size. */
	async ensure(): Promise<void> {
		if (this.#fh) return;
		await (await open(this.path, 'a', 0o600)).close(); // create if missing, keep if reopened
		const fh = await open(this.path, 'r+');
		await fh.truncate(this.size);
		this.#fh = fh;
	}

	async put(data: Buffer): Promise<bigint> {
		await this.ensure();
		const slot = this.#next;
		this.#next = (this.#next + 1) % this.slots;
		const buf = data.length === this.slotSize ? data : Buffer.concat([data, Buffer.alloc(this.slotSize - data.length)]);
		await this.#fh!.write(buf, 0, this.slotSize, slot * this.slotSize);
		// The loop device reads through the page cache (it is attached without
		// direct I/O), so the data is visible to the kernel once written.
		return BigInt((slot * this.slotSize) / 512);
	}

	async close(remove: boolean): Promise<void> {
		await this.#fh?.close();
		this.#fh = undefined;
		if (remove) await rm(this.path, { force: true });
	}
}
