/**
 * attach/detach as the CLI and the hotplug script see them: through the
 * backend daemon when one runs (it then supervises the worker), directly
 * otherwise.
 */
import { askBackend } from './backend-protocol.js';
import { formatTargetSpec, type TargetSpec } from './target-spec.js';
import { type AttachOptions, checkName, startWorker, stopWorker } from './workers.js';

export { checkName, defaultName } from './workers.js';

export async function attach(spec: TargetSpec, opts: AttachOptions): Promise<string> {
	checkName(opts.name);
	const req = { op: 'attach', spec: formatTargetSpec(spec), name: opts.name, readOnly: opts.readOnly, timeoutSec: opts.timeoutSec } as const;
	// The daemon gets the same bound, plus a margin to send its answer.
	const reply = await askBackend(req, opts.timeoutSec === undefined ? undefined : (opts.timeoutSec + 5) * 1000);
	if (reply?.dev) return reply.dev;
	return startWorker(spec, opts);
}

export async function detach(name: string): Promise<boolean> {
	checkName(name);
	const reply = await askBackend({ op: 'detach', name });
	if (reply) return reply.found ?? false;
	return stopWorker(name);
}
