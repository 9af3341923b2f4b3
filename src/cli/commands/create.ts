/**
 * `dmu create`: a new image of any format, qemu-img style:
 *   dmu create -f dscow -b /var/lib/base.img /var/lib/vm.dscow
 *   dmu create -f qcow2 disk.qcow2 10G
 * The format plugin does the work; this only parses and dispatches.
 */
import type { Command } from 'commander';
import { DmuError } from '../../errors.js';
import { loadPlugin } from '../../plugins/registry.js';
import type { CreateOptions } from '../../plugins/types.js';

const UNITS: Record<string, bigint> = { '': 1n, b: 1n, k: 1n << 10n, m: 1n << 20n, g: 1n << 30n, t: 1n << 40n, p: 1n << 50n };

/** "65536", "64k", "64KiB", "10G" -> bytes. */
export function parseSize(text: string, what = 'size'): bigint {
	const m = /^\s*(\d+)\s*([kmgtpb]?)(?:i?b)?\s*$/i.exec(text);
	if (!m) throw new DmuError('DMU_ERR_BAD_OPTION', `bad ${what} "${text}" (use bytes or a suffix k, M, G, T)`);
	return BigInt(m[1]!) * UNITS[m[2]!.toLowerCase()]!;
}

/** A block size as a number (plugins take numbers). */
export function parseBlockSize(text: string): number {
	const n = parseSize(text, 'block size');
	if (n > 1n << 30n) throw new DmuError('DMU_ERR_BAD_OPTION', `block size ${text} is too large`);
	return Number(n);
}

function parseOptions(list: string[]): Record<string, string> {
	const out: Record<string, string> = {};
	for (const item of list.flatMap((s) => s.split(','))) {
		const eq = item.indexOf('=');
		if (eq <= 0) throw new DmuError('DMU_ERR_BAD_OPTION', `bad -o option "${item}" (use key=value)`);
		out[item.slice(0, eq)] = item.slice(eq + 1);
	}
	return out;
}

export function register(program: Command): void {
	program
		.command('create')
		.description('create a new image (size defaults to the base/backing file size)')
		.requiredOption('-f, --format <format>', 'image format (dscow, qcow2, qcow, vmdk, vhd, raw) or a plugin module path')
		.option('-b, --base <file>', 'base image (dscow) or backing file (qcow/qcow2/vhd/vmdk)')
		.option('-F, --base-format <format>', 'format of the base/backing file')
		.option('--block-size <bytes>', 'block/cluster size, e.g. 64k (dscow: 4k..2M, default 64k)')
		.option('-o, --option <key=value>', 'format-specific option (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
		.argument('<image>', 'image file to create (refused if it exists; dscow: or a block device big enough for it)')
		.argument('[size]', 'virtual size, e.g. 10G')
		.addHelpText('after', '\nExample:\n  dmu create -f dscow -b /var/lib/dmu/base.img /var/lib/dmu/vm1.dscow\n')
		.action(async (image: string, size: string | undefined, o: { format: string; base?: string; baseFormat?: string; blockSize?: string; option: string[] }) => {
			const plugin = await loadPlugin(o.format);
			const opts: CreateOptions = { options: parseOptions(o.option) };
			if (size !== undefined) opts.size = parseSize(size);
			if (o.base) opts.base = o.base;
			if (o.baseFormat) opts.baseFormat = o.baseFormat;
			if (o.blockSize) opts.blockSize = parseBlockSize(o.blockSize);
			await plugin.create(image, opts);
			const i = await plugin.info(image).catch(() => undefined);
			process.stdout.write(
				`Formatting '${image}', fmt=${plugin.name}${i ? ` size=${i.virtualSize} block_size=${i.blockSize}` : ''}${o.base ? ` base=${o.base}` : ''}\n`,
			);
		});
}
