/**
 * The allocation bitmap: 32-bit little-endian words, one bit per block,
 * kept whole in memory (2 MiB for a 1 TiB image at 64 KiB blocks). What
 * a commit writes is decided by the image (only blocks the kernel's flush
 * covered), not here.
 */
export class Bitmap {
	readonly words: Uint32Array;

	constructor(
		readonly blockCount: bigint,
		raw?: Buffer,
	) {
		const n = Number((blockCount + 31n) / 32n);
		this.words = new Uint32Array(n);
		if (raw) for (let i = 0; i < n; i++) this.words[i] = raw.readUInt32LE(i * 4);
	}

	get(block: bigint): boolean {
		return this.has(Number(block));
	}

	/** get() for a block number that fits a double (every real bitmap): no BigInt on the hot path. */
	has(block: number): boolean {
		return ((this.words[block >>> 5]! >>> (block & 31)) & 1) === 1;
	}

	/**
	 * How many blocks from `from` on are clear, stopping at `end`: whole
	 * zero words at a time (a run of unwritten blocks is asked for often,
	 * and under emulation a loop per block cost tens of ms per batch).
	 */
	clearUpTo(from: number, end: number): number {
		let b = from;
		while (b < end) {
			const w = this.words[b >>> 5]!;
			if (w === 0 && (b & 31) === 0 && b + 32 <= end) {
				b += 32;
				continue;
			}
			if ((w >>> (b & 31)) & 1) break;
			b++;
		}
		return b - from;
	}

	set(block: bigint): void {
		this.setNumber(Number(block));
	}

	/** set() for a block number that fits a double, as has(). */
	setNumber(block: number): void {
		const w = block >>> 5;
		this.words[w] = (this.words[w]! | (1 << (block & 31))) >>> 0;
	}

	clear(block: bigint): void {
		const b = Number(block);
		const w = b >>> 5;
		this.words[w] = (this.words[w]! & ~(1 << (b & 31))) >>> 0;
	}

	/** Number of set bits (allocated blocks). */
	count(): bigint {
		let n = 0;
		for (const w of this.words) {
			let v = w;
			while (v) {
				v &= v - 1;
				n++;
			}
		}
		return BigInt(n);
	}

	/** Bits set past the last block in the final word: never legitimately set. */
	strayBits(): number {
		const used = Number(this.blockCount % 32n);
		if (used === 0 || this.words.length === 0) return 0;
		return (this.words[this.words.length - 1]! >>> used) >>> 0;
	}

	/** Contiguous runs of word indexes, as [first, count] for one write each. */
	static runs(words: readonly number[]): Array<[number, number]> {
		const out: Array<[number, number]> = [];
		for (const w of words) {
			const last = out[out.length - 1];
			if (last && last[0] + last[1] === w) last[1]++;
			else out.push([w, 1]);
		}
		return out;
	}

	/** Little-endian bytes of words [first, first+count). */
	encode(first: number, count: number): Buffer {
		const b = Buffer.alloc(count * 4);
		for (let i = 0; i < count; i++) b.writeUInt32LE(this.words[first + i]!, i * 4);
		return b;
	}
}
