#!/usr/bin/env node
/**
 * `dmu`: the admin's entry point. Subcommands are registered from
 * ./commands/ (doctor, create, info, check, convert, attach, ...).
 */
import { Command } from 'commander';
import { commands } from './commands/index.js';
import { runMain } from './run.js';

const program = new Command('dmu')
	.description(
		'dm-userspace disks: copy-on-write and image-format block devices whose data path stays in the kernel',
	)
	.version('0.1.0')
	.showHelpAfterError()
	.exitOverride();

for (const register of commands) register(program);

runMain('dmu', async () => {
	await program.parseAsync(process.argv);
});
