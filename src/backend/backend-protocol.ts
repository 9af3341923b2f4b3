/**
 * The backend daemon's control socket (/run/dmu/backend.sock): one JSON
 * request per connection, one JSON reply, then close. `dmu attach` and
 * `dmu detach` use it when the daemon runs, so workers started by hand or by
 * the hotplug script are supervised the same way.
 */
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { DmuError } from '../errors.js';
import { runDir } from './workers.js';

export type BackendRequest =
	| { op: 'attach'; spec: string; name: string; readOnly?: boolean; timeoutSec?: number }
	| { op: 'detach'; name: string }
	| { op: 'list' };

export type BackendOk = { ok: true; dev?: string; found?: boolean; workers?: Array<{ name: string; pid: number; spec: string }> };
export type BackendReply = BackendOk | { ok: false; error: string; code: string; exitCode: number };

export const backendSocket = () => process.env.DMU_BACKEND_SOCKET ?? join(runDir(), 'backend.sock');

/**
 * Send one request. Resolves undefined when no daemon listens (so the
 * caller does the work itself); throws DmuError with the daemon's message
 * when the daemon refused.
 */
export function askBackend(req: BackendRequest, timeoutMs = 60_000): Promise<BackendOk | undefined> {
	return new Promise((resolve, reject) => {
		const sock = createConnection(backendSocket());
		let data = '';
		let connected = false;
		sock.setTimeout(timeoutMs, () => sock.destroy(new Error('backend did not answer in time')));
		sock.on('connect', () => {
			connected = true;
			sock.end(`${JSON.stringify(req)}\n`);
		});
		sock.on('data', (b) => {
			data += b.toString('utf8');
		});
		sock.on('error', (e: NodeJS.ErrnoException) => {
			if (!connected && (e.code === 'ENOENT' || e.code === 'ECONNREFUSED')) resolve(undefined);
			else reject(new DmuError('DMU_ERR_BACKEND', `backend daemon: ${e.message}`));
		});
		sock.on('close', () => {
			if (!connected) return;
			try {
				const reply = JSON.parse(data) as BackendReply;
				if (!reply.ok) reject(new DmuError(reply.code, reply.error, reply.exitCode));
				else resolve(reply);
			} catch {
				reject(new DmuError('DMU_ERR_BACKEND', 'backend daemon sent no valid reply'));
			}
		});
	});
}
