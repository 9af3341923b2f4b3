/**
 * A registered watch as an async iterable of events. The daemon fires once
 * right after registration (with the watched path), then once per change at
 * or below the path. Events are queued until the consumer asks for them.
 *
 * Ending: breaking out of `for await`, calling close(), or aborting the
 * signal unregisters the watch (UNWATCH) and ends the iteration quietly.
 * A lost connection ends it by throwing the connection's error.
 */
import type { Connection, WatchSink } from './connection.js';
import { Op, type WatchEvent } from './messages.js';
import * as ser from './serializer.js';

type Waiter = { resolve(r: IteratorResult<WatchEvent>): void; reject(e: Error): void };

export class Watch implements AsyncIterableIterator<WatchEvent>, WatchSink {
	readonly path: string;
	/** The token reported in events (the caller's, or a generated one). */
	readonly token: string;
	/** Resolves when the daemon accepted the watch; rejects with its error. */
	readonly ready: Promise<void>;
	readonly #conn: Connection;
	/** Unique per connection, so events route without comparing paths. */
	readonly #wireToken: string;
	readonly #queue: WatchEvent[] = [];
	#waiter: Waiter | undefined;
	#ended = false;
	#error: Error | undefined;
	#signal: AbortSignal | undefined;
	readonly #onAbort = () => void this.close();

	/** @internal use client.watch(). */
	constructor(conn: Connection, path: string, token: string, wireToken: string, signal?: AbortSignal) {
		this.#conn = conn;
		this.path = path;
		this.token = token;
		this.#wireToken = wireToken;
		conn.registerWatch(wireToken, this);
		this.ready = conn
			.request(Op.WATCH, path, (id) => ser.watch(id, path, wireToken))
			.then(
				() => {},
				(e: Error) => {
					conn.unregisterWatch(wireToken);
					this.#finish(e);
					throw e;
				},
			);
		// The consumer sees the error from next(); don't also report it as unhandled.
		this.ready.catch(() => {});
		if (signal?.aborted) void this.close();
		else if (signal) {
			this.#signal = signal;
			signal.addEventListener('abort', this.#onAbort, { once: true });
		}
	}

	/** @internal from the connection. */
	event(ev: WatchEvent): void {
		if (this.#ended) return;
		const out = { path: ev.path, token: this.token };
		const w = this.#waiter;
		if (w) {
			this.#waiter = undefined;
			w.resolve({ value: out, done: false });
		} else this.#queue.push(out);
	}

	/** @internal from the connection. */
	closed(err?: Error): void {
		this.#finish(err);
	}

	next(): Promise<IteratorResult<WatchEvent>> {
		const ev = this.#queue.shift();
		if (ev) return Promise.resolve({ value: ev, done: false });
		if (this.#error) return Promise.reject(this.#error);
		if (this.#ended) return Promise.resolve({ value: undefined, done: true });
		if (this.#waiter) return Promise.reject(new Error('Watch: next() called while another next() is waiting'));
		return new Promise((resolve, reject) => {
			this.#waiter = { resolve, reject };
		});
	}

	async return(): Promise<IteratorResult<WatchEvent>> {
		await this.close();
		return { value: undefined, done: true };
	}

	[Symbol.asyncIterator](): this {
		return this;
	}

	/** Unregisters the watch; events already queued are dropped. Idempotent. */
	async close(): Promise<void> {
		if (this.#ended) return;
		this.#finish();
		this.#queue.length = 0;
		// Registration failed or the connection is gone: nothing to undo.
		if (this.#conn.closed || !(await this.ready.then(() => true, () => false))) return;
		try {
			await this.#conn.request(Op.UNWATCH, this.path, (id) => ser.unwatch(id, this.path, this.#wireToken));
		} catch {
			// The connection closed meanwhile: the daemon dropped the watch with it.
		} finally {
			this.#conn.unregisterWatch(this.#wireToken);
		}
	}

	#finish(err?: Error): void {
		if (this.#ended) return;
		this.#ended = true;
		this.#error = err;
		this.#signal?.removeEventListener('abort', this.#onAbort);
		const w = this.#waiter;
		this.#waiter = undefined;
		if (!w) return;
		if (err) w.reject(err);
		else w.resolve({ value: undefined, done: true });
	}
}
