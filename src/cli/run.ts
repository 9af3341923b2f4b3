/**
 * Shared entry-point wrapper for every CLI: DmuError becomes one line on
 * stderr and its exit code; anything else is a bug and says so (with the
 * stack only when DMU_DEBUG is set), never a bare stack trace.
 */
import { isDmuError } from '../errors.js';
import { CommanderError } from 'commander';

export function reportAndExit(prog: string, e: unknown): never {
	if (isDmuError(e)) {
		process.stderr.write(`${prog}: ${e.message}\n`);
		process.exit(e.exitCode);
	}
	if (e instanceof CommanderError) process.exit(e.exitCode);
	const err = e as Error;
	process.stderr.write(`${prog}: internal error: ${err?.message ?? String(e)}\n`);
	if (process.env.DMU_DEBUG) process.stderr.write(`${err?.stack ?? ''}\n`);
	else process.stderr.write(`${prog}: this is a bug; run again with DMU_DEBUG=1 for details\n`);
	process.exit(70);
}

/** Run an async main(), mapping failures to exit codes. */
export function runMain(prog: string, main: () => Promise<unknown>): void {
	main().then(
		(code) => {
			if (typeof code === 'number') process.exitCode = code;
		},
		(e) => reportAndExit(prog, e),
	);
}
