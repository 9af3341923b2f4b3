/**
 * New VHDs: `-o subformat=fixed|dynamic` (dynamic by default), or
 * differencing when a base is given. Sizes round up to a whole CHS
 * geometry as qemu does, so every reader agrees on the size.
 *
 * Dynamic layout: footer copy (0), dynamic header (512), BAT (1536),
 * parent locators (differencing), footer. Blocks are added at the end.
 */
import { randomBytes } from 'node:crypto';
import { open, stat, truncate, writeFile } from 'node:fs/promises';
import { basename, dirname, relative, resolve } from 'node:path';
import { DmuError } from '../../errors.js';
import { pluginFor } from '../registry.js';
import type { CreateOptions } from '../types.js';
import { VhdImage } from './image.js';
import {
	type DynHeader,
	DISK_DIFF,
	DISK_DYNAMIC,
	DISK_FIXED,
	type Footer,
	type ParentLocator,
	createSize,
	serializeDynHeader,
	serializeFooter,
	VHD_EPOCH,
	vhdNow,
} from './layout.js';

const DEFAULT_BLOCK = 2 * 1024 * 1024;
const round512 = (n: number) => Math.ceil(n / 512) * 512;

export async function createVhd(path: string, opts: CreateOptions): Promise<void> {
	const sub = opts.options?.subformat ?? (opts.base ? 'differencing' : 'dynamic');
	if (!['fixed', 'dynamic', 'differencing'].includes(sub)) {
		throw new DmuError('DMU_ERR_USAGE', `vhd: subformat must be fixed or dynamic (differencing comes with a base), not "${sub}"`);
	}
	if (opts.base && sub !== 'differencing') throw new DmuError('DMU_ERR_USAGE', `vhd: a ${sub} disk cannot have a backing file`);
	if (!opts.base && sub === 'differencing') throw new DmuError('DMU_ERR_USAGE', 'vhd: a differencing disk needs a backing file');
	const bs = opts.blockSize ?? DEFAULT_BLOCK;
	if (bs < 512 || bs > 8 * 1024 * 1024 || (bs & (bs - 1)) !== 0) {
		throw new DmuError('DMU_ERR_USAGE', `vhd: block size ${bs} must be a power of two from 512 B to 8 MiB`);
	}
	let parent: { size: bigint; uuid: Buffer; mtime: number; path: string } | undefined;
	if (opts.base) {
		const bp = resolve(opts.base);
		const plugin = await pluginFor(bp, opts.baseFormat);
		const img = await plugin.open(bp, { readOnly: true, allowedRoots: [dirname(bp)] });
		try {
			parent = {
				size: img.virtualSize,
				uuid: img instanceof VhdImage ? img.footer.uniqueId : Buffer.alloc(16),
				mtime: Math.max(0, Math.floor((await stat(bp)).mtimeMs / 1000) - VHD_EPOCH),
				path: bp,
			};
		} finally {
			await img.close();
		}
	}
	const want = opts.size ?? parent?.size;
	if (want === undefined || want <= 0n) throw new DmuError('DMU_ERR_USAGE', 'vhd: a size is needed to create an image');
	const { size, geometry } = createSize(want);
	if (size > 0xff000000n * 512n) throw new DmuError('DMU_ERR_USAGE', `vhd: ${size} bytes is more than the 2040 GiB a VHD holds`);
	const diskType = sub === 'fixed' ? DISK_FIXED : sub === 'dynamic' ? DISK_DYNAMIC : DISK_DIFF;
	const footer: Footer = {
		features: 2,
		version: 0x00010000,
		dataOffset: diskType === DISK_FIXED ? 0xffffffffffffffffn : 512n,
		timestamp: vhdNow(),
		creatorApp: 'dmu ',
		creatorVersion: 0x00010000,
		creatorOs: 'Wi2k',
		originalSize: size,
		currentSize: size,
		...geometry,
		diskType,
		checksum: 0,
		uniqueId: randomBytes(16),
		savedState: 0,
	};
	const fh = await open(path, 'w');
	await fh.close();
	if (diskType === DISK_FIXED) {
		await truncate(path, Number(size));
		const f = await open(path, 'r+');
		try {
			await f.write(serializeFooter(footer), 0, 512, Number(size));
		} finally {
			await f.close();
		}
		return;
	}
	const entries = Number((size + BigInt(bs) - 1n) / BigInt(bs));
	const batOffset = 1536;
	const batBytes = round512(entries * 4);
	let at = batOffset + batBytes;
	const locators: ParentLocator[] = [];
	const locData: Array<[number, Buffer]> = [];
	if (parent) {
		// W2ru (relative, what Windows and XenServer look at first), MacX
		// (absolute file URL, what Linux tools write), W2ku (absolute).
		let rel = relative(dirname(resolve(path)), parent.path).replace(/\//g, '\\');
		if (!rel.startsWith('..')) rel = `.\\${rel}`;
		const kinds: Array<[string, Buffer]> = [
			['W2ru', Buffer.from(rel, 'utf16le')],
			['MacX', Buffer.from(`file://${encodeURI(parent.path)}`, 'utf8')],
			['W2ku', Buffer.from(parent.path.replace(/\//g, '\\'), 'utf16le')],
		];
		for (const [code, data] of kinds) {
			const space = round512(data.length);
			locators.push({ code, dataSpace: space, dataLength: data.length, dataOffset: BigInt(at) });
			locData.push([at, data]);
			at += space;
		}
	}
	const header: DynHeader = {
		dataOffset: 0xffffffffffffffffn,
		tableOffset: BigInt(batOffset),
		version: 0x00010000,
		maxTableEntries: entries,
		blockSize: bs,
		checksum: 0,
		parentUniqueId: parent?.uuid ?? Buffer.alloc(16),
		parentTimestamp: parent?.mtime ?? 0,
		parentName: parent ? basename(parent.path) : '',
		locators,
	};
	const out = Buffer.alloc(at + 512);
	const fb = serializeFooter(footer);
	fb.copy(out, 0);
	serializeDynHeader(header).copy(out, 512);
	out.fill(0xff, batOffset, batOffset + entries * 4);
	for (const [off, data] of locData) data.copy(out, off);
	fb.copy(out, at);
	await writeFile(path, out);
}
