/**
 * `dmu attach SPEC` and `dmu detach NAME|PATH`: a dmu disk by hand, the same
 * way the Xen hotplug script does it.
 */
import type { Command } from 'commander';
import { attach, checkName, defaultName, detach } from '../../backend/attach.js';
import { parseTargetSpec } from '../../backend/target-spec.js';
import { DmuError } from '../../errors.js';

const SPEC_HELP = `
SPEC is <format>:<image>[:<base>], e.g.
  dscow:/var/lib/dmu/guest.dscow:/dev/vols/base
  qcow2:/images/guest.qcow2
Escape a colon or backslash inside a path as "\\:" or "\\\\".

Prints the device path (/dev/mapper/NAME) once the disk serves I/O. The
daemon (cowd) keeps running in the background; its log is
/var/log/dmu/NAME.log (DMU_LOG_DIR), its pid /run/dmu/NAME.pid (DMU_RUN_DIR).`;

export function register(program: Command): void {
	program
		.command('attach')
		.description('attach a disk image as /dev/mapper/NAME and print the path')
		.argument('<spec>', 'disk spec: <format>:<image>[:<base>]')
		.option('-n, --name <name>', 'device name (default: dmu-<image file name>)')
		.option('-r, --read-only', 'attach read-only (Xen mode "r")')
		.option('--timeout <seconds>', 'give up (and stop cowd) if the device does not serve I/O within this many seconds of the command starting', '30')
		.addHelpText('after', SPEC_HELP)
		.action(async (specText: string, opts: { name?: string; readOnly?: boolean; timeout: string }) => {
			const spec = parseTargetSpec(specText);
			const total = Number(opts.timeout);
			if (!(total > 0)) throw new DmuError('DMU_ERR_USAGE', `--timeout: expected a number of seconds, got "${opts.timeout}"`, 2);
			// The bound counts from this process's start: under emulation Node's
			// own start-up is a large part of it, and block-dmu must be done
			// within libxl's 40 s or libxl kills it half way.
			const left = Math.max(1, total - process.uptime());
			const dev = await attach(spec, { name: opts.name ?? defaultName(spec), readOnly: opts.readOnly, timeoutSec: left });
			process.stdout.write(`${dev}\n`);
		});
	program
		.command('detach')
		.description(
			'stop the daemon serving a disk and remove its device; a disk whose daemon died is served once more first, so that blocks the kernel wrote since are recorded',
		)
		.argument('<name>', 'device name or /dev/mapper/NAME path')
		.option('--if-exists', 'succeed quietly when no such disk is attached')
		.action(async (nameOrPath: string, opts: { ifExists?: boolean }) => {
			const name = checkName(nameOrPath.replace(/^\/dev\/mapper\//, ''));
			const found = await detach(name);
			if (!found && !opts.ifExists) {
				process.stderr.write(`dmu: no disk named ${name} is attached\n`);
				process.exitCode = 1;
			}
		});
}
