/**
 * `dmu check [-r leaks|all] IMAGE`: check an image's metadata, with
 * qemu-img check's exit codes so scripts can treat both alike:
 *   0 clean, 1 the check could not run, 2 corruptions, 3 leaks only.
 */
import type { Command } from 'commander';
import { DmuError } from '../../errors.js';
import { pluginFor } from '../../plugins/registry.js';

export const CHECK_EXIT = { clean: 0, failed: 1, corrupt: 2, leaks: 3 } as const;

export function register(program: Command): void {
	program
		.command('check')
		.description('check an image for corruption and leaked space (exit 0 clean, 2 corrupt, 3 leaks)')
		.option('-f, --format <format>', 'image format (probed when omitted)')
		.option('-r, --repair <what>', 'repair leaks, or all (leaks and fixable corruptions)')
		.option('-b, --base <file>', 'base/backing file to check against (instead of the one named in the image)')
		.option('--output <fmt>', 'human or json', 'human')
		.argument('<image>')
		.action(async (image: string, o: { format?: string; repair?: string; base?: string; output: string }) => {
			if (o.repair !== undefined && o.repair !== 'leaks' && o.repair !== 'all') {
				throw new DmuError('DMU_ERR_BAD_OPTION', `-r takes leaks or all (got "${o.repair}")`);
			}
			const plugin = await pluginFor(image, o.format);
			const r = await plugin.check(image, {
				...(o.repair ? { repair: o.repair as 'leaks' | 'all' } : {}),
				...(o.base ? { base: o.base } : {}),
			});
			const code = r.corruptions.length ? CHECK_EXIT.corrupt : r.leaks.length ? CHECK_EXIT.leaks : CHECK_EXIT.clean;
			if (o.output === 'json') {
				process.stdout.write(
					`${JSON.stringify({ filename: image, format: plugin.name, corruptions: r.corruptions, leaks: r.leaks, repaired: r.repaired, 'check-errors': 0 }, null, 4)}\n`,
				);
			} else {
				for (const c of r.corruptions) process.stdout.write(`ERROR ${c}\n`);
				for (const l of r.leaks) process.stdout.write(`Leaked: ${l}\n`);
				for (const x of r.repaired) process.stdout.write(`Repaired: ${x}\n`);
				if (code === CHECK_EXIT.clean) process.stdout.write('No errors were found on the image.\n');
				else if (r.corruptions.length) process.stdout.write(`\n${r.corruptions.length} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`);
				else process.stdout.write(`\n${r.leaks.length} leaked blocks were found on the image.\nThis means waste of disk space, but no harm to data.\n`);
			}
			process.exitCode = code;
		});
}
