/** `dmu backend`: run the Xen backend daemon in the foreground (systemd runs it so). */
import type { Command } from 'commander';
import { pino } from 'pino';
import { Backend } from '../../backend/daemon.js';

export function register(program: Command): void {
	program
		.command('backend')
		.description('run the Xen backend daemon: supervises one cowd per dmu disk and tears down disks of vanished domains')
		.option('--no-xen', 'do not connect to xenstore (attach/detach supervision only)')
		.option('--log-level <level>', 'pino log level', 'info')
		.addHelpText(
			'after',
			'\nListens on /run/dmu/backend.sock (DMU_BACKEND_SOCKET). Logs JSON lines to stdout.\nStops on SIGTERM/SIGINT; attached disks keep running and are adopted by the next start.',
		)
		.action(async (opts: { xen: boolean; logLevel: string }) => {
			const log = pino({ name: 'dmu-backend', level: opts.logLevel });
			const ac = new AbortController();
			for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => ac.abort());
			const backend = new Backend({ log, xen: opts.xen, signal: ac.signal });
			await backend.start();
			await new Promise<void>((resolve) => ac.signal.addEventListener('abort', () => resolve()));
			log.info('backend stopping; workers keep running');
			// Exit now rather than wait for every handle (a watch, a socket
			// being answered) to drain: the workers are separate processes and
			// nothing the daemon holds needs a clean close.
			process.exit(0);
		});
}
