/**
 * New VMDKs as qemu lays them out, so VMware and qemu tools accept them:
 * monolithicSparse (default; with a base it becomes a child disk naming
 * its parent) or monolithicFlat (descriptor + NAME-flat.vmdk).
 *
 * monolithicSparse: header (sector 0), descriptor (1..20), redundant GD
 * and its GTs, GD and its GTs (all GTs preallocated), grains after that.
 */
import { randomInt } from 'node:crypto';
import { open, truncate, writeFile } from 'node:fs/promises';
import { basename, dirname, relative, resolve } from 'node:path';
import { DmuError } from '../../errors.js';
import { pluginFor } from '../registry.js';
import type { CreateOptions } from '../types.js';
import { VmdkImage } from './image.js';
import { FLAG_NL_DETECT, FLAG_RGD, makeDescriptor, serializeHeader } from './layout.js';

const DESC_SECTORS = 20n;
const GTES = 512;

export async function createVmdk(path: string, opts: CreateOptions): Promise<void> {
	const sub = opts.options?.subformat ?? 'monolithicSparse';
	if (sub !== 'monolithicSparse' && sub !== 'monolithicFlat') {
		throw new DmuError('DMU_ERR_USAGE', `vmdk: dmu creates monolithicSparse or monolithicFlat, not "${sub}"`);
	}
	if (opts.base && sub !== 'monolithicSparse') throw new DmuError('DMU_ERR_USAGE', 'vmdk: only a monolithicSparse disk can have a parent');
	let parent: { size: bigint; cid: number; hint: string } | undefined;
	if (opts.base) {
		const bp = resolve(opts.base);
		const img = await (await pluginFor(bp, opts.baseFormat)).open(bp, { readOnly: true, allowedRoots: [dirname(bp)] });
		try {
			parent = {
				size: img.virtualSize,
				cid: img instanceof VmdkImage ? img.cid : 0xfffffffe,
				hint: relative(dirname(resolve(path)), bp),
			};
		} finally {
			await img.close();
		}
	}
	const size = opts.size ?? parent?.size;
	if (size === undefined || size <= 0n) throw new DmuError('DMU_ERR_USAGE', 'vmdk: a size is needed to create an image');
	const sectors = (size + 511n) / 512n;
	const cid = randomInt(0, 0xffffffff);
	if (sub === 'monolithicFlat') {
		const flat = `${basename(path).replace(/\.vmdk$/, '')}-flat.vmdk`;
		const flatPath = resolve(dirname(resolve(path)), flat);
		await (await open(flatPath, 'w')).close();
		await truncate(flatPath, Number(sectors * 512n));
		const text = makeDescriptor({
			cid,
			parentCid: 0xffffffff,
			createType: 'monolithicFlat',
			extents: [`RW ${sectors} FLAT "${flat}" 0`],
			sectors,
		});
		await writeFile(path, text, 'latin1');
		return;
	}
	const gb = opts.blockSize ?? 64 * 1024;
	if (gb < 4096 || gb > 8 * 1024 * 1024 || (gb & (gb - 1)) !== 0) {
		throw new DmuError('DMU_ERR_USAGE', `vmdk: grain size ${gb} must be a power of two from 4 KiB to 8 MiB`);
	}
	const grainSectors = BigInt(gb / 512);
	const grains = (sectors + grainSectors - 1n) / grainSectors;
	const gtSectors = BigInt((GTES * 4) / 512);
	const gtCount = (grains + BigInt(GTES) - 1n) / BigInt(GTES);
	const gdSectors = (gtCount * 4n + 511n) / 512n;
	const rgdOffset = 1n + DESC_SECTORS;
	const gdOffset = rgdOffset + gdSectors + gtSectors * gtCount;
	const metaEnd = gdOffset + gdSectors + gtSectors * gtCount;
	const grainOffset = ((metaEnd + grainSectors - 1n) / grainSectors) * grainSectors;
	if (grainOffset * 512n > 1n << 40n) throw new DmuError('DMU_ERR_USAGE', `vmdk: ${size} bytes is too large for one sparse extent`);
	const header = serializeHeader({
		version: 1,
		flags: FLAG_NL_DETECT | FLAG_RGD,
		capacity: sectors,
		grainSize: grainSectors,
		descriptorOffset: 1n,
		descriptorSize: DESC_SECTORS,
		numGTEsPerGT: GTES,
		rgdOffset,
		gdOffset,
		overHead: grainOffset,
		uncleanShutdown: 0,
		compressAlgorithm: 0,
	});
	const text = makeDescriptor({
		cid,
		parentCid: parent ? parent.cid : 0xffffffff,
		createType: 'monolithicSparse',
		...(parent ? { parentHint: parent.hint } : {}),
		extents: [`RW ${sectors} SPARSE "${basename(path)}"`],
		sectors,
	});
	const desc = Buffer.from(text, 'latin1');
	if (desc.length > Number(DESC_SECTORS) * 512) throw new DmuError('DMU_ERR_USAGE', 'vmdk: descriptor too long (parent path?)');
	const meta = Buffer.alloc(Number(metaEnd) * 512);
	header.copy(meta, 0);
	desc.copy(meta, 512);
	for (const gd of [rgdOffset, gdOffset]) {
		for (let i = 0n; i < gtCount; i++) meta.writeUInt32LE(Number(gd + gdSectors + i * gtSectors), Number(gd * 512n + i * 4n));
	}
	await writeFile(path, meta);
	await truncate(path, Number(grainOffset * 512n));
}
