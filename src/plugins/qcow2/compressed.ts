/**
 * Compressed clusters: raw deflate (QEMU's zlib type, window bits -12) or
 * zstd when this Node's zlib has it. Output is capped at one cluster, so a
 * hostile stream cannot make us allocate more.
 */
import * as zlib from 'node:zlib';
import type { ImageFile } from './file.js';
import { bad, type CompressedRef } from './layout.js';

type ZstdFn = (buf: Buffer, opts: { maxOutputLength: number }) => Buffer;
const zstdDecompress = (zlib as unknown as { zstdDecompressSync?: ZstdFn }).zstdDecompressSync;

/** True when zstd-compressed images can be read. */
export const hasZstd = (): boolean => typeof zstdDecompress === 'function';

export async function readCompressed(
	file: ImageFile,
	ref: CompressedRef,
	clusterSize: number,
	compressionType: number,
): Promise<Buffer> {
	if (ref.offset >= file.size || ref.offset === 0) {
		throw bad(file.path, `compressed cluster at ${ref.offset} lies outside the file`);
	}
	// The last sector may be cut short by the end of the file.
	const len = Math.min(ref.length, file.size - ref.offset);
	const input = await file.read(ref.offset, len, 'compressed cluster');
	let out: Buffer;
	try {
		out =
			compressionType === 1 && zstdDecompress
				? zstdDecompress(input, { maxOutputLength: clusterSize })
				: zlib.inflateRawSync(input, { finishFlush: zlib.constants.Z_SYNC_FLUSH, maxOutputLength: clusterSize });
	} catch (e) {
		throw bad(file.path, `compressed cluster at ${ref.offset} does not decompress (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
	}
	if (out.length !== clusterSize) {
		throw bad(file.path, `compressed cluster at ${ref.offset} decompresses to ${out.length} bytes, not ${clusterSize}`);
	}
	return out;
}
