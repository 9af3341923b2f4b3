#!/usr/bin/env node
/**
 * `dscow_tool`: the 2006 tool's interface, kept for people who know it.
 *   dscow_tool -c IMAGE BASE [-b BLOCKSIZE]   create, print the geometry
 *   dscow_tool -i IMAGE                       show the header
 * `dmu create -f dscow` / `dmu info` do the same for every format.
 */
import { Command } from 'commander';
import { DmuError } from '../errors.js';
import { create } from '../plugins/dscow/create.js';
import { info } from '../plugins/dscow/check.js';
import type { Header } from '../plugins/dscow/layout.js';
import { parseBlockSize } from './commands/create.js';
import { runMain } from './run.js';

/** The seed's five lines, same labels and alignment. */
export function geometryLines(h: Pick<Header, 'virtualSize' | 'firstBlock' | 'blockSize' | 'blockCount' | 'bitmapWords'>): string {
	const rows: Array<[string, bigint | number]> = [
		['Size:', h.virtualSize],
		['First block:', h.firstBlock],
		['Block size:', h.blockSize],
		['Blocks:', h.blockCount],
		['Bitmap count:', h.bitmapWords],
	];
	return rows.map(([k, v]) => `${k.padEnd(14)}${v}\n`).join('');
}

const program = new Command('dscow_tool')
	.description('create or inspect a dscow copy-on-write image')
	.option('-c, --create <image>', 'create IMAGE over BASE (given as the argument)')
	.option('-i, --info <image>', "show IMAGE's header")
	.option('-b, --block-size <bytes>', 'block size for -c: a power of two, 4k..2M', '64k')
	.argument('[base]', 'base image (file or block device) for -c')
	.addHelpText(
		'after',
		'\nExamples:\n  dscow_tool -c /tmp/mydom.dscow /tmp/base.img\n  dscow_tool -c /tmp/mydom.dscow /dev/vols/base -b 1M\n  dscow_tool -i /tmp/mydom.dscow\n',
	)
	.showHelpAfterError()
	.exitOverride()
	.action(async (base: string | undefined, o: { create?: string; info?: string; blockSize: string }) => {
		if (o.create && o.info) throw new DmuError('DMU_ERR_USAGE', 'give -c or -i, not both');
		if (o.create) {
			if (!base) throw new DmuError('DMU_ERR_USAGE', '-c needs a base: dscow_tool -c IMAGE BASE [-b BLOCKSIZE]');
			const h = await create(o.create, { base, blockSize: parseBlockSize(o.blockSize) });
			process.stdout.write(geometryLines(h));
			return;
		}
		if (o.info) {
			const i = await info(o.info);
			const d = i.details;
			process.stdout.write(
				geometryLines({
					virtualSize: i.virtualSize,
					firstBlock: BigInt(d.firstBlock as number),
					blockSize: i.blockSize,
					blockCount: BigInt(d.blocks as number),
					bitmapWords: BigInt(d.bitmapCount as number),
				}),
			);
			const extra: Array<[string, unknown]> = [
				['Version:', d.version],
				['Allocated:', i.allocatedBlocks],
				['Clean:', d.cleanShutdown ? 'yes' : 'no (not closed cleanly, or in use)'],
				['Base:', i.backing?.path ?? '(none: unallocated blocks read zeros)'],
			];
			if (i.backing) extra.push(['Base size:', d.baseSize], ['Base mtime:', d.baseMtimeNs], ['Base hash:', d.baseHash]);
			for (const [k, v] of extra) process.stdout.write(`${k.padEnd(14)}${v}\n`);
			return;
		}
		throw new DmuError('DMU_ERR_USAGE', 'nothing to do: use -c IMAGE BASE or -i IMAGE (see --help)');
	});

// `dscow_tool -i X | head -1` must not die with a stack trace.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
	if (e.code === 'EPIPE') process.exit(0);
	throw e;
});

runMain('dscow_tool', async () => {
	await program.parseAsync(process.argv);
});
