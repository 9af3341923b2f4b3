/**
 * Bytes -> messages. A stream (socket or xenbus device) delivers frames cut
 * anywhere: several in one chunk, or one split over many. Parser keeps the
 * unfinished tail until the rest arrives. Payload decoders for the reply
 * shapes live here too, next to the framing they depend on.
 */
import { Access, HEADER_SIZE, type Message, PAYLOAD_MAX, type Permission, type WatchEvent } from './messages.js';
import { XenstoreError } from './xenstore-error.js';

/**
 * Replies are bounded by PAYLOAD_MAX; allow headroom for daemons that are
 * lax about it, but treat anything larger as garbage rather than buffering
 * megabytes waiting for a frame that will never end.
 */
const FRAME_PAYLOAD_LIMIT = PAYLOAD_MAX * 16;

export class Parser {
	/** Bytes of an unfinished frame from earlier chunks (empty if none). */
	#rest: Buffer = Buffer.alloc(0);

	/** Calls `onMessage` for each whole frame; keeps what remains. */
	parse(chunk: Buffer, onMessage: (msg: Message) => void): void {
		const buf = this.#rest.length ? Buffer.concat([this.#rest, chunk]) : chunk;
		let off = 0;
		while (buf.length - off >= HEADER_SIZE) {
			const len = buf.readUInt32LE(off + 12);
			if (len > FRAME_PAYLOAD_LIMIT) {
				throw new XenstoreError('EPROTO', 'parse', undefined, `frame payload of ${len} bytes`);
			}
			const end = off + HEADER_SIZE + len;
			if (end > buf.length) break;
			onMessage({
				type: buf.readUInt32LE(off),
				reqId: buf.readUInt32LE(off + 4),
				txId: buf.readUInt32LE(off + 8),
				payload: buf.subarray(off + HEADER_SIZE, end),
			});
			off = end;
		}
		// Copy the tail so a small leftover does not pin a large chunk.
		this.#rest = off === buf.length ? Buffer.alloc(0) : Buffer.from(buf.subarray(off));
	}

	/** Bytes held back waiting for the rest of a frame. */
	get pending(): number {
		return this.#rest.length;
	}
}

/** "a\0b\0" -> ["a", "b"]. A missing final NUL is tolerated. */
export function splitStrings(payload: Buffer): string[] {
	if (payload.length === 0) return [];
	const text = payload.toString('utf8');
	const parts = text.split('\0');
	if (text.endsWith('\0')) parts.pop();
	return parts;
}

/** The first NUL-terminated string (ERROR names, TRANSACTION_START ids). */
export function firstString(payload: Buffer): string {
	const nul = payload.indexOf(0);
	return payload.toString('utf8', 0, nul < 0 ? payload.length : nul);
}

/** WATCH_EVENT payload: path\0token\0. */
export function decodeWatchEvent(payload: Buffer): WatchEvent {
	const [path, token] = splitStrings(payload);
	if (path === undefined || token === undefined) {
		throw new XenstoreError('EPROTO', 'WATCH_EVENT', undefined, 'event without path and token');
	}
	return { path, token };
}

const accessByLetter = new Map<string, keyof typeof Access>(
	Object.entries(Access).map(([name, letter]) => [letter, name as keyof typeof Access]),
);

/** "b0" -> { domid: 0, access: "both" }. */
export function decodePermission(text: string): Permission {
	const access = accessByLetter.get(text[0] ?? '');
	const digits = text.slice(1);
	if (!access || !/^\d+$/.test(digits)) {
		throw new XenstoreError('EPROTO', 'GET_PERMS', undefined, `bad permission "${text}"`);
	}
	return { domid: Number(digits), access };
}

/** GET_PERMS reply: one permission string per entry. */
export const decodePermissions = (payload: Buffer): Permission[] => splitStrings(payload).map(decodePermission);
