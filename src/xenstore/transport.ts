/**
 * Byte pipes to a xenstore daemon. Two kinds:
 *  - a unix socket (dom0 tools talking to xenstored: /run/xenstored/socket);
 *  - the xenbus character device /dev/xen/xenbus (any domain, through the
 *    kernel). libuv cannot poll a character device (net.Socket refuses it),
 *    so we read it with fs.read in a loop: each read blocks one libuv pool
 *    thread until the kernel has a reply or a watch event. One connection
 *    therefore holds one of the pool's threads (4 by default) for its life.
 */
import { once } from 'node:events';
import * as fs from 'node:fs';
import { type Socket, createConnection } from 'node:net';
import { promisify } from 'node:util';
import { Op } from './messages.js';
import { frame, strings } from './serializer.js';

export interface TransportEvents {
	/** Bytes arrived; frames may be cut anywhere. */
	onData(chunk: Buffer): void;
	/** The pipe is gone: `err` unless it was closed by close(). Called once. */
	onClose(err?: Error): void;
}

export interface Transport {
	/** Queues one or more whole frames; order is kept. */
	write(buf: Buffer): void;
	/** Stops delivering data and releases the pipe. */
	close(): Promise<void>;
}

export async function openSocket(path: string, ev: TransportEvents): Promise<Transport> {
	const sock: Socket = createConnection(path);
	await once(sock, 'connect');
	let closing = false;
	let err: Error | undefined;
	const closed = new Promise<void>((resolve) =>
		sock.on('close', () => {
			ev.onClose(closing ? undefined : (err ?? new Error(`${path}: connection closed by daemon`)));
			resolve();
		}),
	);
	sock.on('data', (chunk) => ev.onData(chunk));
	sock.on('error', (e) => {
		err = e;
	});
	return {
		write: (buf) => {
			// Requests made in the same tick go out in one write(2).
			if (!sock.writableCorked) {
				sock.cork();
				process.nextTick(() => sock.uncork());
			}
			sock.write(buf);
		},
		close: async () => {
			if (closing) return;
			closing = true;
			sock.destroy();
			await closed;
		},
	};
}

/** Big enough for any frame (16 + 4096) and for several at once. */
const READ_SIZE = 64 * 1024;

/** req_id of the wake-up request sent by close(); the client never uses 0. */
const WAKE_REQ_ID = 0;

const fsRead = promisify(fs.read);
const fsWrite = promisify(fs.write);
const fsClose = promisify(fs.close);

export async function openDevice(path: string, ev: TransportEvents): Promise<Transport> {
	const fd = await promisify(fs.open)(path, 'r+');
	return fdTransport(fd, path, ev);
}

/**
 * The device transport on an already open, blocking descriptor. Works on
 * any stream fd (the tests use a socketpair); `fd` is closed by close().
 */
export function fdTransport(fd: number, label: string, ev: TransportEvents): Transport {
	let closing = false;
	let reported = false;
	let writes = Promise.resolve();
	const report = (err?: Error) => {
		if (reported) return;
		reported = true;
		ev.onClose(err);
	};

	const writeAll = async (buf: Buffer) => {
		for (let off = 0; off < buf.length; ) {
			off += (await fsWrite(fd, buf, off, buf.length - off, null)).bytesWritten;
		}
	};

	const reader = (async () => {
		const buf = Buffer.allocUnsafe(READ_SIZE);
		for (;;) {
			const { bytesRead: n } = await fsRead(fd, buf, 0, READ_SIZE, null);
			if (closing) return;
			if (n === 0) throw new Error(`${label}: end of file`);
			ev.onData(Buffer.from(buf.subarray(0, n)));
		}
	})();
	reader.then(
		() => report(),
		(e: Error) => report(closing ? undefined : e),
	);

	return {
		write: (buf) => {
			// A failed write leaves the daemon with half a frame: the
			// connection is unusable, so report it closed.
			writes = writes.then(() => writeAll(buf)).catch((e: Error) => report(closing ? undefined : e));
		},
		close: async () => {
			if (closing) return;
			closing = true;
			// A read blocked in the kernel keeps the fd (and Node's event
			// loop) busy until something arrives; closing the fd does not
			// wake it. Ask for something harmless so the reply ends the read.
			writes = writes.then(() => writeAll(frame(Op.DIRECTORY, WAKE_REQ_ID, 0, strings('/')))).catch(() => {});
			await writes;
			await reader.catch(() => {});
			await fsClose(fd);
		},
	};
}
