/**
 * One connection to a daemon: frames out, replies matched to requests by
 * req_id, watch events routed to their watch by token. Requests are
 * pipelined: each is written as soon as it is made, and any number may be
 * in flight. Knows nothing about what the operations mean (see ops.ts).
 */
import type { Logger } from 'pino';
import { type Message, Op, opName, type WatchEvent, isXenstoreErrno } from './messages.js';
import { Parser, decodeWatchEvent, firstString } from './parser.js';
import type { Transport } from './transport.js';
import { XenstoreError } from './xenstore-error.js';

interface Pending {
	op: number;
	path: string | undefined;
	resolve(payload: Buffer): void;
	reject(err: Error): void;
}

/** Receives the events of one registered watch token. */
export interface WatchSink {
	event(ev: WatchEvent): void;
	/** The connection ended; `err` unless it was closed on purpose. */
	closed(err?: Error): void;
}

const U32_MAX = 0xffff_ffff;

export class Connection {
	readonly #parser = new Parser();
	readonly #pending = new Map<number, Pending>();
	readonly #watches = new Map<string, WatchSink>();
	readonly #log: Logger | undefined;
	#transport: Transport | undefined;
	#nextReqId = 1;
	#closed: Error | undefined;

	constructor(log?: Logger) {
		this.#log = log;
	}

	/** Second step of construction: the transport needs our callbacks first. */
	attach(transport: Transport): void {
		this.#transport = transport;
	}

	get closed(): boolean {
		return this.#closed !== undefined;
	}

	/** Bytes from the transport. A protocol error is fatal to the connection. */
	onData(chunk: Buffer): void {
		try {
			this.#parser.parse(chunk, (msg) => this.#dispatch(msg));
		} catch (e) {
			this.#fail(e as Error);
			void this.#transport?.close();
		}
	}

	onClose(err?: Error): void {
		this.#fail(err ?? new XenstoreError('ECONNRESET', 'connection', undefined, 'closed'), err === undefined);
	}

	/**
	 * Sends the frame `build(reqId)` and resolves with the reply's payload,
	 * or rejects with XenstoreError carrying the daemon's errno name. Never
	 * throws synchronously.
	 */
	request(op: number, path: string | undefined, build: (reqId: number) => Buffer): Promise<Buffer> {
		if (this.#closed) return Promise.reject(this.#closedError(op, path));
		const reqId = this.#allocReqId();
		let buf: Buffer;
		try {
			buf = build(reqId); // E2BIG/EINVAL are found before anything is sent
		} catch (e) {
			return Promise.reject(e);
		}
		return new Promise((resolve, reject) => {
			this.#pending.set(reqId, { op, path, resolve, reject });
			this.#transport!.write(buf);
		});
	}

	/** Routes WATCH_EVENTs carrying `token` to `sink` until unregistered. */
	registerWatch(token: string, sink: WatchSink): void {
		this.#watches.set(token, sink);
	}

	unregisterWatch(token: string): void {
		this.#watches.delete(token);
	}

	async close(): Promise<void> {
		if (!this.#closed) this.#fail(new XenstoreError('ECONNRESET', 'connection', undefined, 'closed'), true);
		await this.#transport?.close();
	}

	/** Next free id, wrapping at 2^32 and skipping 0 and ids still in flight. */
	#allocReqId(): number {
		for (;;) {
			const id = this.#nextReqId;
			this.#nextReqId = id >= U32_MAX ? 1 : id + 1;
			if (!this.#pending.has(id)) return id;
		}
	}

	#dispatch(msg: Message): void {
		if (msg.type === Op.WATCH_EVENT) {
			const ev = decodeWatchEvent(msg.payload);
			const sink = this.#watches.get(ev.token);
			// Events for a watch we just removed can still be on their way.
			if (sink) sink.event(ev);
			else this.#log?.debug({ path: ev.path, token: ev.token }, 'watch event for no watch');
			return;
		}
		const p = this.#pending.get(msg.reqId);
		if (!p) {
			// req_id 0 is the device transport's wake-up at close.
			if (msg.reqId !== 0) this.#log?.warn({ reqId: msg.reqId, type: msg.type }, 'reply to no request');
			return;
		}
		this.#pending.delete(msg.reqId);
		if (msg.type === Op.ERROR) {
			const name = firstString(msg.payload);
			p.reject(
				isXenstoreErrno(name)
					? new XenstoreError(name, opName(p.op), p.path)
					: new XenstoreError('EPROTO', opName(p.op), p.path, `unknown error "${name}"`),
			);
		} else if (msg.type !== p.op) {
			p.reject(new XenstoreError('EPROTO', opName(p.op), p.path, `reply of type ${opName(msg.type)}`));
		} else {
			p.resolve(msg.payload);
		}
	}

	/** Ends everything in flight; `quiet` when the user closed on purpose. */
	#fail(err: Error, quiet = false): void {
		if (this.#closed) return;
		this.#closed = err;
		if (!quiet) this.#log?.warn({ err: err.message }, 'xenstore connection lost');
		for (const p of this.#pending.values()) p.reject(this.#closedError(p.op, p.path));
		this.#pending.clear();
		const sinks = [...this.#watches.values()];
		this.#watches.clear();
		const watchErr =
			err instanceof XenstoreError
				? err
				: new XenstoreError('ECONNRESET', 'WATCH', undefined, `connection closed: ${err.message}`);
		for (const s of sinks) s.closed(quiet ? undefined : watchErr);
	}

	#closedError(op: number, path: string | undefined): XenstoreError {
		const why = this.#closed?.message ?? 'closed';
		return new XenstoreError('ECONNRESET', opName(op), path, `connection closed: ${why}`);
	}
}
