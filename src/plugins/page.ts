/**
 * Page separation between data and metadata.
 *
 * Under cowd the kernel writes guest data through a direct-I/O loop device
 * while plugins write their metadata (tables, bitmaps, footers) through the
 * page cache. A page that holds both gets read, patched and written back
 * whole by the page cache, racing the kernel's direct writes to the same
 * page: stale data can win on disk, and buffered readers (qemu-img) can see
 * a stale page. Plugins that place new data at the end of their file start
 * it on a page of its own.
 */
export const PAGE = 4096n;

/** `x` rounded up to a multiple of `a`. */
export const alignUp = (x: bigint, a: bigint): bigint => ((x + a - 1n) / a) * a;
