/**
 * vhd: Microsoft's Virtual Hard Disk, the format of Virtual PC, Hyper-V
 * (before VHDX), XenServer and XCP-ng. Fixed, dynamic and differencing
 * disks, read-write. See layout.ts (format), meta.ts (validation),
 * image.ts (mapping), create.ts (new images).
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { DmuError, isDmuError } from '../../errors.js';
import { Backing, backingDisplayPath, resolveBackingPath } from '../raw/backing.js';
import { ImageFile } from '../raw/io.js';
import type { CheckResult, ImageInfo, OpenOptions, Plugin } from '../types.js';
import { createVhd } from './create.js';
import { VhdImage } from './image.js';
import { BAT_UNUSED, COOKIE, DISK_DIFF, DISK_FIXED, footerChecksumOk, parseFooter } from './layout.js';
import { readMeta } from './meta.js';

function fixedFooterAt(path: string): boolean {
	let fd: number | undefined;
	try {
		fd = openSync(path, 'r');
		const size = fstatSync(fd).size;
		if (size < 1024) return false;
		const b = Buffer.alloc(512);
		readSync(fd, b, 0, 512, size - 512);
		const f = parseFooter(b);
		return f !== undefined && f.diskType === DISK_FIXED && footerChecksumOk(b);
	} catch {
		return false;
	} finally {
		if (fd !== undefined) closeSync(fd);
	}
}

const TYPE_NAMES: Record<number, string> = { 2: 'fixed', 3: 'dynamic', 4: 'differencing' };

/** The first parent name that resolves inside the allowed places. */
async function findParent(path: string, names: string[], opts: OpenOptions): Promise<string> {
	let firstError: unknown;
	for (const n of names) {
		try {
			return await resolveBackingPath(path, n, opts);
		} catch (e) {
			if (!isDmuError(e)) throw e;
			// A refused path says more than "not found": keep it for the message.
			if (!firstError || e.code === 'DMU_ERR_BACKING_PATH') firstError = e;
		}
	}
	throw firstError ?? new DmuError('DMU_ERR_BACKING', `${path}: differencing VHD names no usable parent`);
}

export const plugin: Plugin = {
	name: 'vhd',

	probe(header, path) {
		// Dynamic disks start with a footer copy; a fixed disk only has its
		// footer in the last sector, so look there too (once, synchronously).
		if (header.length >= 8 && header.toString('latin1', 0, 8) === COOKIE) return true;
		return fixedFooterAt(path);
	},

	create: createVhd,

	async open(path, opts: OpenOptions = {}) {
		const writable = !opts.readOnly;
		const file = await ImageFile.open(path, writable);
		let backing: Backing | undefined;
		try {
			const meta = await readMeta(file, opts.force);
			if (meta.footer.savedState && writable && !opts.force) {
				throw new DmuError('DMU_ERR_BUSY', `${path}: the VHD holds a saved VM state; open it read-only (or --force)`);
			}
			if (meta.footer.diskType === DISK_DIFF) {
				const parentPath = opts.base ?? (await findParent(path, meta.parentNames, opts));
				backing = await Backing.open(path, parentPath, opts.base ? opts.baseFormat : undefined, opts, 1);
				const p = backing.image;
				if (p instanceof VhdImage && !p.footer.uniqueId.equals(meta.header!.parentUniqueId) && !opts.force && !opts.base) {
					throw new DmuError(
						'DMU_ERR_BACKING',
						`${path}: parent ${parentPath} is not the disk this one was made from (unique id differs; --force to use it anyway)`,
					);
				}
				if (p.virtualSize < meta.virtualSize && !opts.force) {
					opts.log?.warn({ path, parent: parentPath }, 'parent is smaller than the differencing disk; the rest reads as zeros');
				}
			}
			return new VhdImage({
				path,
				file,
				footer: meta.footer,
				header: meta.header,
				bat: meta.bat,
				virtualSize: meta.virtualSize,
				blockSize: meta.blockSize,
				nextFree: meta.nextFree,
				writable,
				backing,
				scratch: opts.scratch,
			});
		} catch (e) {
			await backing?.close().catch(() => undefined);
			await file.close();
			throw e;
		}
	},

	async check(path, opts = {}): Promise<CheckResult> {
		const result: CheckResult = { corruptions: [], leaks: [], repaired: [] };
		const file = await ImageFile.open(path, false);
		try {
			const meta = await readMeta(file).catch((e) => {
				if (isDmuError(e)) result.corruptions.push(e.message);
				else throw e;
				return undefined;
			});
			if (!meta) return result;
			if (meta.tailFooterBad) result.corruptions.push('the footer at the end of the file is missing or damaged');
			if (meta.bat && meta.header) {
				const bitmap = BigInt(Math.ceil(meta.blockSize / 512 / 8 / 512) * 512);
				const spans: Array<[bigint, bigint, number]> = [];
				meta.bat.forEach((e, i) => {
					if (e !== BAT_UNUSED) spans.push([BigInt(e) * 512n, BigInt(e) * 512n + bitmap + BigInt(meta.blockSize), i]);
				});
				spans.sort((a, b) => (a[0] < b[0] ? -1 : 1));
				const batEnd = meta.header.tableOffset + BigInt(meta.header.maxTableEntries) * 4n;
				for (let i = 0; i < spans.length; i++) {
					const [s, e, b] = spans[i]!;
					if (s < batEnd && e > meta.header.tableOffset) {
						result.corruptions.push(`block ${b} overlaps the BAT`);
					}
					if (i > 0 && s < spans[i - 1]![1]) result.corruptions.push(`block ${b} overlaps block ${spans[i - 1]![2]}`);
				}
			}
			if (meta.footer.diskType === DISK_DIFF) {
				try {
					await findParent(path, meta.parentNames, opts);
				} catch (e) {
					if (isDmuError(e)) result.corruptions.push(e.message);
					else throw e;
				}
			}
			return result;
		} finally {
			await file.close();
		}
	},

	async info(path, opts = {}): Promise<ImageInfo> {
		const file = await ImageFile.open(path, false);
		try {
			const meta = await readMeta(file, opts.force);
			const st = await file.fh.stat({ bigint: true });
			const allocated =
				meta.footer.diskType === DISK_FIXED
					? (meta.virtualSize + BigInt(meta.blockSize) - 1n) / BigInt(meta.blockSize)
					: BigInt((meta.bat ?? []).filter((e) => e !== BAT_UNUSED).length);
			const parent = meta.parentNames[0];
			return {
				format: 'vhd',
				virtualSize: meta.virtualSize,
				blockSize: meta.blockSize,
				actualSize: st.blocks * 512n,
				allocatedBlocks: allocated,
				...(parent ? { backing: { path: backingDisplayPath(path, parent) } } : {}),
				details: {
					subformat: TYPE_NAMES[meta.footer.diskType] ?? String(meta.footer.diskType),
					creator: meta.footer.creatorApp.replace(/\0/g, '').trim(),
					currentSize: meta.footer.currentSize.toString(),
					geometry: `${meta.footer.cylinders}/${meta.footer.heads}/${meta.footer.sectorsPerTrack}`,
					uniqueId: meta.footer.uniqueId.toString('hex'),
				},
			};
		} finally {
			await file.close();
		}
	},
};

