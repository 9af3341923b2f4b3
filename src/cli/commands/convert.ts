/**
 * `dmu convert`: copy a disk image into another format (or the same one,
 * compacted). Reads any format dmu knows (backing chains flattened unless
 * -B keeps a backing file), writes only blocks that hold data, and shows
 * progress on a terminal with -p.
 */
import cliProgress from 'cli-progress';
import { type Command, Option } from 'commander';
import { convert } from '../../convert/convert.js';
import { DmuError } from '../../errors.js';

function parseOptions(list: string[]): Record<string, string> {
	const out: Record<string, string> = {};
	for (const item of list.flatMap((s) => s.split(','))) {
		if (item === '') continue;
		const eq = item.indexOf('=');
		if (eq <= 0) throw new DmuError('DMU_ERR_USAGE', `convert: -o wants key=value, got "${item}"`);
		out[item.slice(0, eq)] = item.slice(eq + 1);
	}
	return out;
}

function parseSize(s: string): number {
	const m = /^(\d+)([kKmM]?)$/.exec(s);
	if (!m) throw new DmuError('DMU_ERR_USAGE', `convert: bad block size "${s}" (e.g. 65536, 64k, 2M)`);
	const unit = (m[2] ?? '').toLowerCase();
	return Number(m[1]) * (unit === 'k' ? 1024 : unit === 'm' ? 1024 * 1024 : 1);
}

export function register(program: Command): void {
	program
		.command('convert')
		.description('convert a disk image to another format (raw, vhd, vmdk, qcow, qcow2, dscow)')
		.argument('<src>', 'source image')
		.argument('<dst>', 'destination image (overwritten)')
		.option('-f, --format <fmt>', 'source format (probed when omitted)')
		.requiredOption('-O, --output-format <fmt>', 'destination format')
		.option('-B, --backing <file>', 'make DST a copy-on-write image of FILE: only blocks that differ from it are written')
		.option('-F, --backing-format <fmt>', 'format of the -B file (probed when omitted)')
		.option('-o, --options <k=v,...>', 'destination format options, e.g. subformat=fixed', (v: string, prev: string[]) => [...prev, v], [] as string[])
		.addOption(new Option('-b, --block-size <size>', 'destination block/cluster size (e.g. 64k)'))
		.option('--allow-root <dir>', 'directory the source\'s backing files may be in (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
		.option('-p, --progress', 'show progress (on a terminal)')
		.addHelpText(
			'after',
			`
Blocks that read as zeros are not written, so sparse formats stay small.
Backing chains of the source are flattened into DST unless -B is given.
Backing files named inside the source must lie in its directory or an
--allow-root directory.

Examples:
  dmu convert -O vhd -o subformat=dynamic disk.qcow2 disk.vhd
  dmu convert -f vmdk -O qcow2 -p appliance.vmdk appliance.qcow2
  dmu convert -O qcow2 -B base.qcow2 snapshot.vhd delta.qcow2`,
		)
		.action(async (src: string, dst: string, o: Record<string, unknown>) => {
			const bar =
				o.progress && process.stderr.isTTY
					? new cliProgress.SingleBar(
							{ format: 'converting [{bar}] {percentage}% | {value}/{total} MiB | ETA {eta}s', stream: process.stderr, hideCursor: true },
							cliProgress.Presets.shades_classic,
						)
					: undefined;
			const MiB = 1024n * 1024n;
			let started = false;
			try {
				await convert({
					src,
					dst,
					dstFormat: o.outputFormat as string,
					...(o.format ? { srcFormat: o.format as string } : {}),
					...(o.backing ? { backing: o.backing as string } : {}),
					...(o.backingFormat ? { backingFormat: o.backingFormat as string } : {}),
					...(o.blockSize ? { blockSize: parseSize(o.blockSize as string) } : {}),
					options: parseOptions(o.options as string[]),
					allowedRoots: o.allowRoot as string[],
					onProgress: (done, total) => {
						if (!bar) return;
						if (!started) {
							bar.start(Number((total + MiB - 1n) / MiB), 0);
							started = true;
						}
						bar.update(Number(done / MiB));
					},
				});
			} finally {
				if (started) bar?.stop();
			}
		});
}
