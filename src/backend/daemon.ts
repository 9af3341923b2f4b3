/**
 * `dmu backend`: the long-running Xen backend.
 *
 *  - Serves attach/detach/list on a unix socket (backend-protocol.ts), so
 *    disks set up by the block-dmu hotplug script have a supervisor.
 *  - Supervises workers: a cowd that dies while its device still exists is
 *    started again with the same spec; it takes the device over and the
 *    kernel re-sends the requests that were pending, so guest I/O goes on.
 *  - Watches xenstore (backend/vbd and @releaseDomain) and tears down the
 *    disks of vbds that are gone, for when libxl's remove hook never ran.
 *
 * Workers outlive the daemon (they are detached, recorded in /run/dmu), so
 * restarting the daemon adopts them instead of disturbing running guests.
 * Only backend nodes written by dom0 are read; never a frontend's.
 */
import { chmod, mkdir, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { DmuError, isDmuError } from '../errors.js';
import { connect, type XenstoreClient } from '../xenstore/index.js';
import { type BackendReply, type BackendRequest, backendSocket } from './backend-protocol.js';
import { parseTargetSpec } from './target-spec.js';
import { alive, listWorkers, startWorker, stopWorker } from './workers.js';

/** dmu-xen-<domid>-<devid>, the names block-dmu gives Xen disks. */
const XEN_NAME = /^dmu-xen-(\d+)-(\d+)$/;
const VBD_ROOT = '/local/domain/0/backend/vbd';

export interface BackendOptions {
	log: Logger;
	/** Connect to xenstore and tear down disks of vanished vbds (default true). */
	xen?: boolean;
	/** How often to check workers, ms. */
	superviseMs?: number;
	signal: AbortSignal;
}

export class Backend {
	readonly #log: Logger;
	/** Names being detached on purpose: their cowd exiting is not a crash. */
	readonly #stopping = new Set<string>();
	/** Names with a restart in progress, so one crash restarts once. */
	readonly #restarting = new Set<string>();
	/** Attach/detach in progress per name: requests for one disk run in order. */
	readonly #busy = new Map<string, Promise<unknown>>();
	#server: Server | undefined;
	#xs: XenstoreClient | undefined;

	constructor(readonly opts: BackendOptions) {
		this.#log = opts.log;
	}

	async start(): Promise<void> {
		const sockPath = backendSocket();
		await mkdir(dirname(sockPath), { recursive: true, mode: 0o755 });
		await rm(sockPath, { force: true });
		// Half-open: the client ends its side after the request, we still answer.
		this.#server = createServer({ allowHalfOpen: true }, (s) => void this.#serve(s));
		await new Promise<void>((resolve, reject) => {
			this.#server!.once('error', (e) =>
				reject(new DmuError('DMU_ERR_BACKEND', `cannot listen on ${sockPath}: ${(e as NodeJS.ErrnoException).code ?? e.message}`)),
			);
			this.#server!.listen(sockPath, () => resolve());
		});
		await chmod(sockPath, 0o600); // attach runs cowd as root: root only
		const workers = await listWorkers();
		this.#log.info({ socket: sockPath, adopted: workers.map((w) => w.name) }, 'backend started');
		const timer = setInterval(() => void this.#supervise(), this.opts.superviseMs ?? 1000);
		this.opts.signal.addEventListener('abort', () => {
			clearInterval(timer);
			this.#server?.close();
			void this.#xs?.close();
		});
		if (this.opts.xen !== false) await this.#watchXen();
	}

	#serialised<T>(name: string, fn: () => Promise<T>): Promise<T> {
		const prev = this.#busy.get(name) ?? Promise.resolve();
		const next = prev.catch(() => {}).then(fn);
		this.#busy.set(name, next);
		void next.finally(() => {
			if (this.#busy.get(name) === next) this.#busy.delete(name);
		}).catch(() => {});
		return next;
	}

	async #serve(sock: Socket): Promise<void> {
		// Not `for await`: ending the iteration would destroy the socket
		// before the reply is written.
		const data = await new Promise<string>((resolve) => {
			let buf = '';
			sock.setEncoding('utf8');
			sock.on('data', (chunk: string) => {
				buf += chunk;
				if (buf.length > 65536) sock.destroy();
			});
			sock.on('end', () => resolve(buf));
			sock.on('error', () => resolve(''));
		});
		let reply: BackendReply;
		let req: BackendRequest | undefined;
		try {
			req = JSON.parse(data) as BackendRequest;
			reply = await this.#handle(req);
		} catch (e) {
			const disk = req && 'name' in req ? req.name : undefined;
			if (isDmuError(e)) this.#log.warn({ disk, op: req?.op, err: e.message }, 'request refused');
			else this.#log.error({ disk, op: req?.op, err: e }, 'request failed');
			reply = isDmuError(e)
				? { ok: false, error: e.message, code: e.code, exitCode: e.exitCode }
				: { ok: false, error: `backend: ${(e as Error).message}`, code: 'DMU_ERR_BACKEND', exitCode: 1 };
		}
		sock.end(`${JSON.stringify(reply)}\n`);
	}

	async #handle(req: BackendRequest): Promise<BackendReply> {
		switch (req.op) {
			case 'attach': {
				const spec = parseTargetSpec(req.spec);
				const dev = await this.#serialised(req.name, () => startWorker(spec, { name: req.name, readOnly: req.readOnly, timeoutSec: req.timeoutSec }));
				this.#log.info({ disk: req.name, spec: req.spec, dev }, 'attached');
				return { ok: true, dev };
			}
			case 'detach':
				return { ok: true, found: await this.#detach(req.name, 'requested') };
			case 'list':
				return { ok: true, workers: await listWorkers() };
			default:
				throw new Error(`unknown op ${JSON.stringify((req as { op?: unknown }).op)}`);
		}
	}

	#detach(name: string, why: string): Promise<boolean> {
		return this.#serialised(name, async () => {
			this.#stopping.add(name);
			try {
				const found = await stopWorker(name);
				if (found) this.#log.info({ disk: name, why }, 'detached');
				return found;
			} finally {
				this.#stopping.delete(name);
			}
		});
	}

	/** Restart workers that died while their device is still there. */
	async #supervise(): Promise<void> {
		for (const w of await listWorkers()) {
			if (alive(w.pid) || this.#stopping.has(w.name) || this.#restarting.has(w.name) || this.#busy.has(w.name)) continue;
			this.#restarting.add(w.name);
			const log = this.#log.child({ disk: w.name });
			try {
				log.warn({ pid: w.pid }, 'cowd died; starting it again (the kernel keeps pending I/O)');
				await this.#serialised(w.name, () => startWorker(parseTargetSpec(w.spec), { name: w.name }));
				log.info('cowd restarted');
			} catch (e) {
				log.error({ err: isDmuError(e) ? e.message : e }, 'restart failed; will retry');
			} finally {
				this.#restarting.delete(w.name);
			}
		}
	}

	/** Detach Xen disks whose backend vbd node is gone. */
	async #reap(): Promise<void> {
		const xs = this.#xs;
		if (!xs) return;
		for (const w of await listWorkers()) {
			const m = XEN_NAME.exec(w.name);
			if (!m) continue;
			const node = `${VBD_ROOT}/${m[1]}/${m[2]}`;
			if ((await xs.tryRead(`${node}/params`)) !== undefined) continue;
			await this.#detach(w.name, `${node} is gone`).catch((e) =>
				this.#log.error({ disk: w.name, err: isDmuError(e) ? e.message : e }, 'teardown failed'),
			);
		}
	}

	async #watchXen(): Promise<void> {
		try {
			this.#xs = await connect({ logger: this.#log });
		} catch (e) {
			this.#log.warn({ err: (e as Error).message }, 'no xenstore: serving attach/detach only');
			return;
		}
		for (const path of [VBD_ROOT, '@releaseDomain']) {
			const watch = this.#xs.watch(path, { signal: this.opts.signal });
			void (async () => {
				try {
					for await (const _ of watch) await this.#reap();
				} catch (e) {
					if (!this.opts.signal.aborted) this.#log.error({ err: (e as Error).message, path }, 'xenstore watch ended');
				}
			})();
		}
	}
}


