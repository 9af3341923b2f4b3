/**
 * Async client of one dm-userspace control device, /dev/dmu/<key>.
 *
 * Node cannot poll() a character device (libuv only watches sockets, pipes
 * and ttys), so reads are plain blocking read(2) calls made by fs.read in
 * libuv's threadpool: while cowd waits for requests, one threadpool thread
 * sits in the kernel. The pool has 4 threads by default and is shared with
 * every fs call, dns lookup and zlib job, so a process serving N disks must
 * start with UV_THREADPOOL_SIZE >= N + 4 (set it in the environment, or in
 * process.env before the first asynchronous fs call; libuv reads it once).
 *
 * Protocol facts used here (see the uapi header): the first message after
 * open is FEATURES with id 0; read() returns whole messages, at most
 * features.maxBatch of them; read() returns 0 once the target is
 * destroyed; write() consumes whole messages in order and stops at the
 * first invalid one.
 */
import fs from 'node:fs';
import { DmuError } from '../errors.js';
import { decodeBatch, encodeBatch } from './codec.js';
import { DMU_MSG_SIZE, MsgType, msgTypeName } from './constants.js';
import { type DaemonMessage, type DmuMessage, type FeaturesMsg, getFeatures } from './messages.js';

export const ControlErrorCode = {
	/** /dev/dmu/<key> does not exist: no such target, or dmu.ko not loaded. */
	NO_TARGET: 'DMU_ERR_NO_TARGET',
	/** Another daemon holds the control device. */
	BUSY: 'DMU_ERR_CONTROL_BUSY',
	/** Opening needs CAP_SYS_ADMIN. */
	PERM: 'DMU_ERR_CONTROL_PERM',
	/** The kernel did not start with a FEATURES message. */
	PROTOCOL: 'DMU_ERR_CONTROL_PROTOCOL',
	/** The kernel refused some messages of a written batch. */
	REJECTED: 'DMU_ERR_CONTROL_REJECTED',
	/** The device was closed by us. */
	CLOSED: 'DMU_ERR_CONTROL_CLOSED',
	/** Any other read/write/open failure. */
	IO: 'DMU_ERR_CONTROL_IO',
} as const;

/** A batch in which the kernel refused some messages (the others were taken). */
export class ControlRejectError extends DmuError {
	constructor(
		readonly path: string,
		/** Each refused message with the errno code the kernel gave (e.g. EINVAL). */
		readonly rejected: readonly { message: DaemonMessage; errno: string }[],
	) {
		const first = rejected[0]!;
		super(
			ControlErrorCode.REJECTED,
			`${path}: kernel refused ${rejected.length} message(s), first ${msgTypeName(first.message.type)} id ${first.message.id}: ${first.errno}`,
		);
	}
}

/** Errors that concern the whole device, not one message of a batch. */
const DEVICE_ERRNOS = new Set(['EBADF', 'ENODEV', 'ENXIO', 'EPIPE', 'EFAULT', 'EIO']);

/** Id of the GET_FEATURES sent to wake our own blocked read on close(). */
const WAKE_ID = (1n << 64n) - 1n;
/** How long close() waits for that wake-up before closing anyway. */
const WAKE_TIMEOUT_MS = 2000;

function errnoOf(e: unknown): string {
	return (e as NodeJS.ErrnoException)?.code ?? 'EUNKNOWN';
}

/** One clear line for an open/read/write failure. */
export function controlError(e: unknown, path: string, op: 'open' | 'read' | 'write'): DmuError {
	const code = errnoOf(e);
	switch (code) {
		case 'ENOENT':
		case 'ENXIO':
		case 'ENODEV':
			return new DmuError(
				ControlErrorCode.NO_TARGET,
				`${path}: no such dm-userspace target (${code}); is dmu.ko loaded and a "userspace" table with this key active?`,
			);
		case 'EBUSY':
			return new DmuError(ControlErrorCode.BUSY, `${path}: another daemon is already serving this target (EBUSY)`);
		case 'EACCES':
		case 'EPERM':
			return new DmuError(
				ControlErrorCode.PERM,
				`${path}: permission denied (${code}); the control device needs CAP_SYS_ADMIN, run as root`,
			);
		default:
			return new DmuError(ControlErrorCode.IO, `${path}: ${op} failed: ${code} ${(e as Error)?.message ?? ''}`.trim());
	}
}

const fsOpen = (path: string, flags: number) =>
	new Promise<number>((resolve, reject) => fs.open(path, flags, (err, fd) => (err ? reject(err) : resolve(fd))));
/** read(2) at the current position (position null: char devices cannot pread). */
const fsRead = (fd: number, buf: Buffer) =>
	new Promise<number>((resolve, reject) =>
		fs.read(fd, buf, 0, buf.length, null, (err, n) => (err ? reject(err) : resolve(n))),
	);
const fsWrite = (fd: number, buf: Buffer, off: number) =>
	new Promise<number>((resolve, reject) =>
		fs.write(fd, buf, off, buf.length - off, null, (err, n) => (err ? reject(err) : resolve(n))),
	);
/**
 * The same write done on the calling thread. For answers the kernel takes
 * without waiting on anything the daemon does (a map reply, an allocation's
 * ack): mapping inserts and copies started, short work next to a
 * thread-pool write's two thread hand-offs, which under emulation were a
 * large part of what cowd spent per batch.
 */
const fsWriteNow = (fd: number, buf: Buffer, off: number): Promise<number> => {
	try {
		return Promise.resolve(fs.writeSync(fd, buf, off, buf.length - off, null));
	} catch (e) {
		return Promise.reject(e);
	}
};
/** Messages the kernel handles without sleeping on the daemon (an invalidate waits for its bios, a commit's answer wakes a flush). */
const answersOnly = (msgs: readonly DaemonMessage[]) => msgs.every((m) => m.type === MsgType.MAP_REPLY || m.type === MsgType.ALLOCATED_ACK);
const fsClose = (fd: number) => new Promise<void>((resolve) => fs.close(fd, () => resolve()));

export class ControlDevice {
	readonly path: string;
	/** The FEATURES message the kernel sent at open (id 0). */
	readonly features: FeaturesMsg;
	#fd: number;
	#buf: Buffer;
	#closed = false;
	#pendingRead: Promise<unknown> | null = null;

	private constructor(path: string, fd: number, features: FeaturesMsg) {
		this.path = path;
		this.#fd = fd;
		this.features = features;
		this.#buf = Buffer.alloc(Math.max(1, features.maxBatch) * DMU_MSG_SIZE);
	}

	/**
	 * Open /dev/dmu/<key> read-write and read the kernel's FEATURES message.
	 * Throws DmuError: NO_TARGET, BUSY, PERM, PROTOCOL or IO.
	 */
	static async open(path: string): Promise<ControlDevice> {
		let fd: number;
		try {
			fd = await fsOpen(path, fs.constants.O_RDWR);
		} catch (e) {
			throw controlError(e, path, 'open');
		}
		try {
			// (libuv opens every fd O_CLOEXEC.) A one-message buffer: read() returns exactly the FEATURES record.
			const first = Buffer.alloc(DMU_MSG_SIZE);
			let n: number;
			try {
				n = await fsRead(fd, first);
			} catch (e) {
				throw controlError(e, path, 'read');
			}
			const [msg] = decodeBatch(first.subarray(0, n));
			if (!msg || msg.type !== MsgType.FEATURES) {
				throw new DmuError(
					ControlErrorCode.PROTOCOL,
					`${path}: expected FEATURES as the first message, got ${msg ? msgTypeName(msg.type) : 'end of file'}`,
				);
			}
			return new ControlDevice(path, fd, msg);
		} catch (e) {
			await fsClose(fd);
			throw e;
		}
	}

	/** True when the kernel offers this Feature bit. */
	has(feature: bigint): boolean {
		return (this.features.features & feature) === feature;
	}

	/**
	 * Wait for the next batch (1..maxBatch messages). Resolves to [] once the
	 * target is destroyed (read() returned 0) or after close(). One read at a
	 * time. Throws AbiError on malformed bytes, DmuError on read failures.
	 */
	async readBatch(): Promise<DmuMessage[]> {
		if (this.#closed) throw new DmuError(ControlErrorCode.CLOSED, `${this.path}: control device is closed`);
		if (this.#pendingRead) throw new Error('ControlDevice.readBatch: a read is already in progress');
		const read = fsRead(this.#fd, this.#buf);
		this.#pendingRead = read.catch(() => {});
		let n: number;
		try {
			n = await read;
		} catch (e) {
			if (this.#closed) return [];
			throw controlError(e, this.path, 'read');
		} finally {
			this.#pendingRead = null;
		}
		// Messages read while closing are dropped: the kernel queues
		// requests that were read but not answered again for the next daemon.
		if (this.#closed || n === 0) return [];
		return decodeBatch(Buffer.from(this.#buf.subarray(0, n)));
	}

	/**
	 * Write a batch. Messages the kernel refuses (e.g. EINVAL for a bad
	 * device index) do not stop the rest of the batch: they are skipped and
	 * reported together afterwards in a ControlRejectError.
	 */
	async writeBatch(msgs: readonly DaemonMessage[]): Promise<void> {
		if (this.#closed) throw new DmuError(ControlErrorCode.CLOSED, `${this.path}: control device is closed`);
		if (msgs.length === 0) return;
		const buf = encodeBatch(msgs);
		const write = answersOnly(msgs) ? fsWriteNow : fsWrite;
		const rejected: { message: DaemonMessage; errno: string }[] = [];
		let off = 0;
		while (off < buf.length) {
			let n: number;
			try {
				n = await write(this.#fd, buf, off);
			} catch (e) {
				const code = errnoOf(e);
				if (DEVICE_ERRNOS.has(code)) throw controlError(e, this.path, 'write');
				// The kernel refused the first message of what we offered.
				rejected.push({ message: msgs[off / DMU_MSG_SIZE]!, errno: code });
				off += DMU_MSG_SIZE;
				continue;
			}
			if (n <= 0 || n % DMU_MSG_SIZE !== 0) {
				throw new DmuError(ControlErrorCode.IO, `${this.path}: write took ${n} bytes, not whole messages`);
			}
			off += n;
		}
		if (rejected.length > 0) throw new ControlRejectError(this.path, rejected);
	}

	/**
	 * Close the device. A read blocked in the kernel would keep the file
	 * open (and a threadpool thread busy) until a message arrives, so first
	 * wake it with a GET_FEATURES of our own, then close the fd: the kernel
	 * sees the daemon leave at once.
	 */
	async close(): Promise<void> {
		if (this.#closed) return;
		this.#closed = true;
		const pending = this.#pendingRead;
		if (pending) {
			try {
				await fsWrite(this.#fd, encodeBatch([getFeatures(WAKE_ID)]), 0);
			} catch {
				// The target may be gone already; the read then returns on its own.
			}
			let timer: NodeJS.Timeout | undefined;
			await Promise.race([pending, new Promise((r) => (timer = setTimeout(r, WAKE_TIMEOUT_MS)))]);
			clearTimeout(timer);
		}
		await fsClose(this.#fd);
	}
}
