#!/usr/bin/env -S node --jitless --no-expose-wasm
/**
 * `cowd`: serve one image as /dev/mapper/<name> through dm-userspace until
 * SIGTERM/SIGINT. The image's format plugin answers the kernel's questions;
 * the data itself never passes through this process.
 */
import '../cowd/threadpool.js';
import { tmpdir } from 'node:os';
import { Command, InvalidArgumentError } from 'commander';
import pino from 'pino';
import { Cowd } from '../cowd/daemon.js';
import { MODULE_HINT } from '../cowd/devices.js';
import { runsJitless } from '../cowd/node-flags.js';
import { DEFAULT_MAX_RUN } from '../cowd/worker.js';
import { runMain } from './run.js';

const int = (what: string) => (v: string) => {
	if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`${what} must be a whole number`);
	return Number(v);
};

const program = new Command('cowd')
	.description(
		'Attach IMAGE as /dev/mapper/NAME with copy-on-write or image-format semantics and serve it until SIGTERM/SIGINT. ' +
			'The kernel asks cowd where each block lives the first time it is touched; the answer is remembered in the ' +
			'kernel and later I/O never leaves it.',
	)
	.requiredOption('-p, --plugin <format>', 'image format: dscow, qcow2, qcow, vmdk, vhd, raw, or a plugin module path')
	.argument('<name>', 'device name: /dev/mapper/<name> (its control device is /dev/dmu/<name with [^A-Za-z0-9._-] as _>)')
	.argument('<image>', 'image file or block device')
	.argument('[base]', 'base image (dscow) or backing file, overriding the one recorded in the image')
	.option('-F, --base-format <format>', 'format of the base/backing file')
	.option('-r, --read-only', 'serve the disk read-only (no allocation, no metadata writes)', false)
	.option('-A, --allow-root <dir>', 'directory a base/backing path named inside the image may point into (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
	.option('--no-direct-io', 'attach image files with buffered loop devices (default: direct I/O where the file system allows it)')
	.option('--daemon-timeout <seconds>', 'how long the kernel holds I/O while no cowd serves the disk (0 = forever; kernel default 60)', int('--daemon-timeout'))
	.option('--max-mappings <n>', 'bound on mappings the kernel remembers (kernel default 65536)', int('--max-mappings'))
	.option(
		'--max-run <blocks>',
		'most blocks one answer may cover when neighbours share it (unwritten base blocks, zeros): one round trip maps them all; 1 = ask for every block; at most 4096 (the kernel limit)',
		int('--max-run'),
		DEFAULT_MAX_RUN,
	)
	.option('--scratch-dir <dir>', 'where the scratch file for partial/compressed blocks lives', tmpdir())
	.option('--log-level <level>', 'fatal, error, warn, info, debug, trace', process.env.DMU_LOG_LEVEL ?? 'info')
	.addHelpText(
		'after',
		`
Examples:
  dscow_tool -c /var/lib/dmu/vm1.dscow /var/lib/dmu/base.img
  cowd -p dscow vm1 /var/lib/dmu/vm1.dscow          # base taken from the image header
  cowd -p dscow vm1 /var/lib/dmu/vm1.dscow /dev/vols/base
  cowd -p qcow2 -r web /srv/images/web.qcow2

Behaviour:
  - Image files become loop devices (autoclear); block devices are used directly.
  - SIGTERM/SIGINT: commit metadata, remove /dev/mapper/NAME unless it is in use
    (then it is left in place and waits for a new cowd), exit 0.
  - Starting cowd again with the same NAME while the device exists takes it over:
    the kernel sends the new daemon every request the old one left unanswered.
  - An image already served read-write by another cowd is refused.
  - Needs root and the dmu kernel module: ${MODULE_HINT}.
  - Logs are JSON lines (pino) on stderr.
`,
	)
	.showHelpAfterError()
	.exitOverride()
	.action(
		async (
			name: string,
			image: string,
			base: string | undefined,
			o: {
				plugin: string;
				baseFormat?: string;
				readOnly: boolean;
				allowRoot: string[];
				directIo: boolean;
				daemonTimeout?: number;
				maxMappings?: number;
				maxRun?: number;
				scratchDir: string;
				logLevel: string;
			},
		) => {
			const log = pino({ name: 'cowd', level: o.logLevel }, pino.destination(2));
			// Which program and how it runs (see node-flags.ts), before anything can fail.
			log.info({ disk: name, node: process.version, jitless: runsJitless() }, 'starting');
			const cowd = new Cowd({
				plugin: o.plugin,
				name,
				image,
				...(base ? { base } : {}),
				...(o.baseFormat ? { baseFormat: o.baseFormat } : {}),
				readOnly: o.readOnly,
				allowedRoots: o.allowRoot,
				directIo: o.directIo,
				...(o.daemonTimeout !== undefined ? { daemonTimeout: o.daemonTimeout } : {}),
				...(o.maxMappings !== undefined ? { maxMappings: o.maxMappings } : {}),
				...(o.maxRun !== undefined ? { maxRun: o.maxRun } : {}),
				scratchDir: o.scratchDir,
				log,
			});
			const onSignal = (sig: NodeJS.Signals) => {
				log.info({ signal: sig }, 'stopping');
				cowd.requestStop();
			};
			process.on('SIGTERM', onSignal);
			process.on('SIGINT', onSignal);
			await cowd.run();
			log.flush();
		},
	);

runMain('cowd', async () => {
	await program.parseAsync(process.argv);
});
