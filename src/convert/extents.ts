/**
 * Where a sparse file holds data: the ranges lseek(SEEK_DATA/SEEK_HOLE)
 * reports, so a conversion reads a raw source's data and not its holes (a
 * 4 GiB raw disk a quarter full is 3 GiB of zeros to read and scan
 * otherwise; qemu-img skips them the same way).
 *
 * Node has no lseek and no npm package offers SEEK_DATA without a native
 * add-on, so a few lines of Perl ask for us: perl-base is Essential in
 * Debian, its sysseek() takes any whence, and one process per conversion
 * costs milliseconds. Anything unexpected (no perl, a file system without
 * SEEK_DATA, odd output) returns undefined and the caller reads everything.
 */
import { execa } from 'execa';

/** [start, end) byte ranges that may hold data; everything else reads as zeros. */
export type Extents = ReadonlyArray<readonly [bigint, bigint]>;

// Exit 0 with "start end" lines (none for a file of holes), or non-zero
// when SEEK_DATA is not supported (EINVAL) or anything else goes wrong.
// ENXIO from SEEK_DATA means: no data at or after this offset.
const LIST_DATA = `
use strict; use Errno;
open(my $f, '<', $ARGV[0]) or exit 3;
my $pos = 0;
while (1) {
	my $d = sysseek($f, $pos, 3);
	if (!defined $d) { exit($!{ENXIO} ? 0 : 4); }
	my $h = sysseek($f, $d, 4);
	exit 5 if !defined $h;
	print(($d + 0), " ", ($h + 0), "\\n");
	$pos = $h;
}`;

export async function dataExtents(path: string): Promise<Extents | undefined> {
	const r = await execa('perl', ['-e', LIST_DATA, path], { reject: false, stdin: 'ignore' }).catch(() => undefined);
	if (r?.exitCode !== 0) return undefined;
	const out: Array<readonly [bigint, bigint]> = [];
	for (const line of r.stdout.split('\n')) {
		if (!line) continue;
		const m = /^(\d+) (\d+)$/.exec(line);
		if (!m) return undefined;
		const start = BigInt(m[1]!);
		const end = BigInt(m[2]!);
		if (end <= start || (out.length > 0 && start < out[out.length - 1]![1])) return undefined;
		out.push([start, end]);
	}
	return out;
}

/**
 * Index of the first of the sorted, disjoint `[start, end)` ranges that
 * ends after `from` (ranges.length if none): a binary search, since a
 * chunk of 512-byte blocks can hold thousands of ranges.
 */
export function firstEndingAfter<T extends number | bigint>(ranges: ReadonlyArray<readonly [T, T]>, from: T): number {
	let lo = 0;
	let hi = ranges.length;
	while (lo < hi) {
		const mid = (lo + hi) >> 1;
		if (ranges[mid]![1] <= from) lo = mid + 1;
		else hi = mid;
	}
	return lo;
}

/** The parts of [from, to) that `extents` covers, in order. */
export function overlaps(extents: Extents, from: bigint, to: bigint): Array<[bigint, bigint]> {
	const out: Array<[bigint, bigint]> = [];
	for (let i = firstEndingAfter(extents, from); i < extents.length && extents[i]![0] < to; i++) {
		const [s, e] = extents[i]!;
		out.push([s > from ? s : from, e < to ? e : to]);
	}
	return out;
}
