/**
 * Messages -> bytes: plain functions, one per request the client sends,
 * each returning one whole frame. Frames larger than PAYLOAD_MAX are refused
 * here with E2BIG: the daemon would drop the whole connection instead.
 */
import { Access, HEADER_SIZE, Op, PAYLOAD_MAX, type Permission, opName } from './messages.js';
import { XenstoreError } from './xenstore-error.js';

/** Request ids and transaction ids are u32 on the wire. */
const U32_MAX = 0xffff_ffff;

/** Header + payload. `path` only improves the error message. */
export function frame(type: number, reqId: number, txId: number, payload: Buffer, path?: string): Buffer {
	if (payload.length > PAYLOAD_MAX) {
		throw new XenstoreError('E2BIG', opName(type), path, `payload of ${payload.length} bytes`);
	}
	if (reqId < 0 || reqId > U32_MAX || txId < 0 || txId > U32_MAX) {
		throw new XenstoreError('EINVAL', opName(type), path, 'request or transaction id out of range');
	}
	const buf = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
	buf.writeUInt32LE(type, 0);
	buf.writeUInt32LE(reqId, 4);
	buf.writeUInt32LE(txId, 8);
	buf.writeUInt32LE(payload.length, 12);
	payload.copy(buf, HEADER_SIZE);
	return buf;
}

/** Each string followed by its NUL: the payload shape of most requests. */
export function strings(...parts: string[]): Buffer {
	const bufs: Buffer[] = [];
	for (const p of parts) {
		if (p.includes('\0')) throw new XenstoreError('EINVAL', 'encode', p, 'NUL inside a string');
		bufs.push(Buffer.from(p, 'utf8'), NUL);
	}
	return Buffer.concat(bufs);
}
const NUL = Buffer.from([0]);

/** { domid: 5, access: "read" } -> "r5". */
export function encodePermission(p: Permission): string {
	const letter = Access[p.access];
	if (!letter || !Number.isInteger(p.domid) || p.domid < 0 || p.domid > 0xffff) {
		throw new XenstoreError('EINVAL', 'SET_PERMS', undefined, `bad permission ${JSON.stringify(p)}`);
	}
	return `${letter}${p.domid}`;
}

export const read = (reqId: number, txId: number, path: string) =>
	frame(Op.READ, reqId, txId, strings(path), path);

/** The value is not NUL-terminated: it runs to the end of the frame. */
export const write = (reqId: number, txId: number, path: string, value: string | Buffer) =>
	frame(
		Op.WRITE,
		reqId,
		txId,
		Buffer.concat([strings(path), typeof value === 'string' ? Buffer.from(value, 'utf8') : value]),
		path,
	);

export const mkdir = (reqId: number, txId: number, path: string) =>
	frame(Op.MKDIR, reqId, txId, strings(path), path);

export const rm = (reqId: number, txId: number, path: string) => frame(Op.RM, reqId, txId, strings(path), path);

export const directory = (reqId: number, txId: number, path: string) =>
	frame(Op.DIRECTORY, reqId, txId, strings(path), path);

/** DIRECTORY_PART: children from byte `offset` of the full listing. */
export const directoryPart = (reqId: number, txId: number, path: string, offset: number) =>
	frame(Op.DIRECTORY_PART, reqId, txId, strings(path, String(offset)), path);

export const getPermissions = (reqId: number, txId: number, path: string) =>
	frame(Op.GET_PERMS, reqId, txId, strings(path), path);

export const setPermissions = (reqId: number, txId: number, path: string, perms: readonly Permission[]) => {
	if (perms.length === 0) throw new XenstoreError('EINVAL', 'SET_PERMS', path, 'empty permission list');
	return frame(Op.SET_PERMS, reqId, txId, strings(path, ...perms.map(encodePermission)), path);
};

/** Watches are per connection, not per transaction: tx_id is always 0. */
export const watch = (reqId: number, path: string, token: string) =>
	frame(Op.WATCH, reqId, 0, strings(path, token), path);

export const unwatch = (reqId: number, path: string, token: string) =>
	frame(Op.UNWATCH, reqId, 0, strings(path, token), path);

/** The payload is a single empty string; the reply carries the new id. */
export const transactionStart = (reqId: number) => frame(Op.TRANSACTION_START, reqId, 0, strings(''));

/** "T" commits, "F" abandons. A commit that lost a race answers EAGAIN. */
export const transactionEnd = (reqId: number, txId: number, commit: boolean) =>
	frame(Op.TRANSACTION_END, reqId, txId, strings(commit ? 'T' : 'F'));

export const getDomainPath = (reqId: number, domid: number) =>
	frame(Op.GET_DOMAIN_PATH, reqId, 0, strings(String(domid)));

export const resetWatches = (reqId: number) => frame(Op.RESET_WATCHES, reqId, 0, Buffer.alloc(0));
