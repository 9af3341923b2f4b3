/**
 * XenstoreClient: connect to a daemon, then read/write/... (ops.ts), watch
 * (watch.ts) and run transactions with automatic retry on conflict.
 *
 * Where it connects, first match wins:
 *   1. options.path;
 *   2. env XENSTORED_PATH (what Xen's own tools honour);
 *   3. /run/xenstored/socket (dom0 with a local xenstored);
 *   4. /dev/xen/xenbus (any domain, through the kernel).
 * A path that is a character device is opened as a device, anything else as
 * a unix socket.
 */
import { stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { Connection } from './connection.js';
import { Op } from './messages.js';
import { XenstoreOps } from './ops.js';
import { firstString } from './parser.js';
import * as ser from './serializer.js';
import { fdTransport, openDevice, openSocket } from './transport.js';
import { Watch } from './watch.js';
import { XenstoreError, isXenstoreError } from './xenstore-error.js';

export const DEFAULT_SOCKET = '/run/xenstored/socket';
export const XENBUS_DEVICE = '/dev/xen/xenbus';

export interface ConnectOptions {
	/** Socket or device path; see the top of this file for the default. */
	path?: string;
	/** Receives connection-level warnings and debug lines. */
	logger?: Logger;
}

export interface WatchOptions {
	/** Aborting unregisters the watch and ends the iteration. */
	signal?: AbortSignal;
}

export interface TransactionOptions {
	/** Retries after a conflicting commit (EAGAIN) before giving up. Default 16. */
	retries?: number;
}

/** Node operations inside one transaction (tx_id in every header). */
export class Transaction extends XenstoreOps {}

const DEFAULT_TX_RETRIES = 16;

export class XenstoreClient extends XenstoreOps {
	/** What we connected to. */
	readonly path: string;
	#watchSeq = 0;

	/** @internal use connect(). */
	constructor(conn: Connection, path: string) {
		super(conn, 0);
		this.path = path;
	}

	/**
	 * Watches `path` and everything below it (or a special path such as
	 * "@introduceDomain"). Iterate the result with `for await`; see
	 * watch.ts for how it ends. `token` is reported back in each event.
	 */
	watch(path: string, token?: string | WatchOptions, opts: WatchOptions = {}): Watch {
		if (typeof token === 'object') {
			opts = token;
			token = undefined;
		}
		const seq = ++this.#watchSeq;
		const userToken = token ?? `dmu-watch-${seq}`;
		return new Watch(this.conn, path, userToken, `${seq}:${userToken}`, opts.signal);
	}

	/**
	 * Runs `fn` in a transaction and commits. If the commit loses a race
	 * with another writer (EAGAIN), `fn` runs again in a fresh transaction,
	 * up to `retries` times, so `fn` must be safe to repeat (read what it
	 * needs inside the transaction, keep side effects out). If `fn` throws,
	 * the transaction is abandoned and the error rethrown.
	 */
	async transaction<T>(fn: (tx: Transaction) => Promise<T>, opts: TransactionOptions = {}): Promise<T> {
		const retries = opts.retries ?? DEFAULT_TX_RETRIES;
		for (let attempt = 0; ; attempt++) {
			const txId = await this.#start();
			let result: T;
			try {
				result = await fn(new Transaction(this.conn, txId));
			} catch (e) {
				await this.#end(txId, false).catch(() => {});
				if (isXenstoreError(e, 'EAGAIN') && attempt < retries) {
					await backoff(attempt);
					continue;
				}
				throw e;
			}
			try {
				await this.#end(txId, true);
				return result;
			} catch (e) {
				if (!isXenstoreError(e, 'EAGAIN') || attempt >= retries) throw e;
			}
			await backoff(attempt);
		}
	}

	/** Home path of a domain, e.g. "/local/domain/5". */
	async getDomainPath(domid: number): Promise<string> {
		return firstString(await this.conn.request(Op.GET_DOMAIN_PATH, undefined, (id) => ser.getDomainPath(id, domid)));
	}

	/** Drops every watch this connection has on the daemon's side. */
	async resetWatches(): Promise<void> {
		await this.conn.request(Op.RESET_WATCHES, undefined, (id) => ser.resetWatches(id));
	}

	/** Closes the connection: requests in flight fail with ECONNRESET, watches end. */
	close(): Promise<void> {
		return this.conn.close();
	}

	async #start(): Promise<number> {
		const reply = await this.conn.request(Op.TRANSACTION_START, undefined, (id) => ser.transactionStart(id));
		const txId = Number(firstString(reply));
		if (!Number.isInteger(txId) || txId <= 0) {
			throw new XenstoreError('EPROTO', 'TRANSACTION_START', undefined, `bad transaction id "${firstString(reply)}"`);
		}
		return txId;
	}

	async #end(txId: number, commit: boolean): Promise<void> {
		await this.conn.request(Op.TRANSACTION_END, undefined, (id) => ser.transactionEnd(id, txId, commit));
	}
}

/** A few ms, growing and jittered, so two retrying writers stop colliding. */
const backoff = (attempt: number) => sleep(Math.random() * Math.min(50, 2 ** attempt));

async function isCharDevice(path: string): Promise<boolean> {
	try {
		return (await stat(path)).isCharacterDevice();
	} catch {
		return false;
	}
}

async function open(path: string, conn: Connection): Promise<XenstoreClient> {
	const events = { onData: (b: Buffer) => conn.onData(b), onClose: (e?: Error) => conn.onClose(e) };
	const transport = (await isCharDevice(path)) ? await openDevice(path, events) : await openSocket(path, events);
	conn.attach(transport);
	return new XenstoreClient(conn, path);
}

/**
 * A client on an already open descriptor of a xenbus-like stream (e.g. an
 * inherited /dev/xen/xenbus fd), using the device transport's blocking
 * read loop. The fd must be in blocking mode; close() closes it.
 */
export function connectFd(fd: number, opts: { label?: string; logger?: Logger } = {}): XenstoreClient {
	const label = opts.label ?? `fd ${fd}`;
	const conn = new Connection(opts.logger?.child({ component: 'xenstore', path: label }));
	conn.attach(fdTransport(fd, label, { onData: (b) => conn.onData(b), onClose: (e) => conn.onClose(e) }));
	return new XenstoreClient(conn, label);
}

/** Opens a connection; see the top of this file for where. */
export async function connect(opts: ConnectOptions = {}): Promise<XenstoreClient> {
	const log = opts.logger?.child({ component: 'xenstore' });
	const explicit = opts.path ?? process.env.XENSTORED_PATH;
	const candidates = explicit ? [explicit] : [DEFAULT_SOCKET, XENBUS_DEVICE];
	let lastErr: unknown;
	for (const path of candidates) {
		try {
			const client = await open(path, new Connection(log?.child({ path })));
			log?.debug({ path }, 'connected');
			return client;
		} catch (e) {
			lastErr = e;
		}
	}
	const why = lastErr instanceof Error ? lastErr.message : String(lastErr);
	throw new XenstoreError('ECONNREFUSED', 'connect', candidates.join(' or '), `cannot connect: ${why}`);
}
