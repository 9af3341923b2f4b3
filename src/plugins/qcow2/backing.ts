/**
 * The backing chain, on top of the shared helper (src/plugins/raw/backing.ts:
 * path safety, loop detection across formats, device shifting, block-size
 * mismatches). This adapter turns its answers into MapDecisions and reads a
 * qcow2 backing's bytes directly (no round trip through its scratch copies).
 */
import { Backing as SharedBacking } from '../raw/backing.js';
import type { MapDecision, OpenOptions } from '../types.js';

/** Implemented by images that hand out their bytes directly (ours). */
export interface ByteSource {
	qcow2ReadBytes(offset: number, length: number): Promise<Buffer>;
}
const isByteSource = (x: unknown): x is ByteSource => typeof (x as Partial<ByteSource>).qcow2ReadBytes === 'function';

export class Backing {
	private constructor(readonly shared: SharedBacking) {}

	/** Open the backing named in the header (or opts.base); undefined when there is none. */
	static async open(
		imagePath: string,
		name: string | undefined,
		format: string | undefined,
		opts: OpenOptions,
		shift: number,
	): Promise<Backing | undefined> {
		const n = opts.base ?? name;
		if (n === undefined) return undefined;
		return new Backing(await SharedBacking.open(imagePath, n, format, opts, shift));
	}

	get devices() {
		return this.shared.devices;
	}

	get format(): string {
		return this.shared.image.format;
	}

	get virtualSize(): number {
		return Number(this.shared.size);
	}

	/** Where our block `block` (of `bs` bytes) reads from, read-only. */
	async decide(block: number, bs: number): Promise<MapDecision> {
		const l = await this.shared.locate(BigInt(block) * BigInt(bs), bs);
		if (l.kind !== 'map') return l;
		return { kind: 'map', dev: l.dev, sector: l.sector, writable: false, ...(l.temporary ? { temporary: true } : {}) };
	}

	/** Bytes of the backing disk; zeros past its end. */
	async readBytes(offset: number, length: number): Promise<Buffer> {
		const img = this.shared.image;
		if (isByteSource(img)) {
			const out = Buffer.alloc(length);
			const end = Math.min(offset + length, Number(img.virtualSize));
			if (end > offset) (await img.qcow2ReadBytes(offset, end - offset)).copy(out);
			return out;
		}
		return this.shared.read(BigInt(offset), length);
	}

	close(): Promise<void> {
		return this.shared.close();
	}
}
