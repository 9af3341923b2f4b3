/**
 * `dmu info [--output json] IMAGE`: what an image is (format probed unless
 * -f is given), like `qemu-img info`.
 */
import type { Command } from 'commander';
import { DmuError } from '../../errors.js';
import { pluginFor } from '../../plugins/registry.js';
import type { ImageInfo } from '../../plugins/types.js';

/** JSON-safe form: sizes as numbers (exact below 2^53, which covers every disk). */
export function infoJson(file: string, i: ImageInfo): Record<string, unknown> {
	const out: Record<string, unknown> = {
		filename: file,
		format: i.format,
		'virtual-size': Number(i.virtualSize),
		'actual-size': Number(i.actualSize),
		'block-size': i.blockSize,
		'allocated-blocks': Number(i.allocatedBlocks),
		dirty: i.dirty ?? false,
	};
	if (i.backing) {
		out['backing-filename'] = i.backing.path;
		if (i.backing.format) out['backing-filename-format'] = i.backing.format;
	}
	out['format-specific'] = { type: i.format, data: i.details };
	return out;
}

const human = (n: bigint) => {
	const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
	let v = Number(n);
	let u = 0;
	while (v >= 1024 && u < units.length - 1) {
		v /= 1024;
		u++;
	}
	return `${Number.isInteger(v) ? v : v.toFixed(2)} ${units[u]}`;
};

export function register(program: Command): void {
	program
		.command('info')
		.description('show an image: format, sizes, base/backing file, format details')
		.option('-f, --format <format>', 'image format (probed when omitted)')
		.option('--output <fmt>', 'human or json', 'human')
		.argument('<image>')
		.action(async (image: string, o: { format?: string; output: string }) => {
			if (o.output !== 'human' && o.output !== 'json') {
				throw new DmuError('DMU_ERR_BAD_OPTION', `--output must be human or json (got "${o.output}")`);
			}
			const plugin = await pluginFor(image, o.format);
			const i = await plugin.info(image);
			if (o.output === 'json') {
				process.stdout.write(`${JSON.stringify(infoJson(image, i), null, 4)}\n`);
				return;
			}
			const lines = [
				`image: ${image}`,
				`file format: ${i.format}`,
				`virtual size: ${human(i.virtualSize)} (${i.virtualSize} bytes)`,
				`disk size: ${human(i.actualSize)}`,
				`block size: ${i.blockSize}`,
				`allocated blocks: ${i.allocatedBlocks}`,
			];
			if (i.backing) lines.push(`backing file: ${i.backing.path}${i.backing.format ? ` (${i.backing.format})` : ''}`);
			if (i.dirty !== undefined) lines.push(`dirty: ${i.dirty}`);
			const keys = Object.keys(i.details);
			if (keys.length) {
				lines.push('Format specific information:');
				for (const k of keys) lines.push(`    ${k}: ${i.details[k]}`);
			}
			process.stdout.write(`${lines.join('\n')}\n`);
		});
}
