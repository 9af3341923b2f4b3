/**
 * The xenstore wire protocol (Xen's xen/include/public/io/xs_wire.h and
 * docs/misc/xenstore.txt): operation numbers, error names, frame layout and
 * the typed shapes of messages and permissions.
 *
 * A frame is a 16-byte little-endian header followed by `len` payload bytes:
 *   u32 type    Op.*
 *   u32 req_id  chosen by the client, echoed in the reply
 *   u32 tx_id   transaction id, 0 outside a transaction
 *   u32 len     payload length, at most PAYLOAD_MAX
 * Payloads are NUL-terminated strings, except a WRITE's value and a READ's
 * reply, which are raw bytes running to the end of the frame.
 */

/** Message types; the numbers are the positions in enum xsd_sockmsg_type. */
export const Op = {
	DEBUG: 0,
	DIRECTORY: 1,
	READ: 2,
	GET_PERMS: 3,
	WATCH: 4,
	UNWATCH: 5,
	TRANSACTION_START: 6,
	TRANSACTION_END: 7,
	INTRODUCE: 8,
	RELEASE: 9,
	GET_DOMAIN_PATH: 10,
	WRITE: 11,
	MKDIR: 12,
	RM: 13,
	SET_PERMS: 14,
	/** Daemon -> client only, unsolicited: a watched node changed. */
	WATCH_EVENT: 15,
	/** Daemon -> client only: the reply to a failed request. */
	ERROR: 16,
	IS_DOMAIN_INTRODUCED: 17,
	RESUME: 18,
	SET_TARGET: 19,
	/** Removed from Xen (4.7); answered with ENOSYS. Kept so 20 has a name. */
	RESTRICT: 20,
	RESET_WATCHES: 21,
	/** Paged DIRECTORY for directories too large for one reply. */
	DIRECTORY_PART: 22,
} as const;
export type Op = (typeof Op)[keyof typeof Op];

const opNames = new Map<number, string>(Object.entries(Op).map(([name, n]) => [n, name]));
/** "READ" for 2; "OP_99" for a number the protocol does not define. */
export const opName = (op: number): string => opNames.get(op) ?? `OP_${op}`;

/**
 * The errors a daemon sends, as the ERROR reply's payload string (names,
 * not numbers, because errno values differ between operating systems).
 * Value: what it usually means in xenstore terms.
 */
export const XenstoreErrno = {
	EINVAL: 'invalid argument (bad path, bad permission string ...)',
	EACCES: 'permission denied',
	EEXIST: 'already exists',
	EISDIR: 'is a directory',
	ENOENT: 'no such node',
	ENOMEM: 'daemon out of memory',
	ENOSPC: 'quota exceeded',
	EIO: 'daemon I/O error',
	ENOTEMPTY: 'directory not empty',
	ENOSYS: 'operation not supported',
	EROFS: 'read-only',
	EBUSY: 'busy',
	EAGAIN: 'transaction conflict, try again',
	EISCONN: 'already connected',
	E2BIG: 'too big',
} as const;
export type XenstoreErrno = keyof typeof XenstoreErrno;
export const isXenstoreErrno = (s: string): s is XenstoreErrno => Object.hasOwn(XenstoreErrno, s);

/** struct xsd_sockmsg: four u32 fields. */
export const HEADER_SIZE = 16;
/** XENSTORE_PAYLOAD_MAX: a bigger frame makes the daemon drop the connection. */
export const PAYLOAD_MAX = 4096;
/** XENSTORE_ABS_PATH_MAX: longest absolute path the daemon accepts. */
export const ABS_PATH_MAX = 3072;

/** One frame, decoded only as far as the header. */
export interface Message {
	readonly type: number;
	readonly reqId: number;
	readonly txId: number;
	readonly payload: Buffer;
}

/** A watch fired: `path` is the node that changed (or the watched path on registration). */
export interface WatchEvent {
	readonly path: string;
	readonly token: string;
}

/**
 * One entry of a node's permission list. The first entry names the owner
 * (who may always read and write) and the access every domain not listed
 * later gets; later entries grant access to one domain each.
 */
export interface Permission {
	readonly domid: number;
	readonly access: Access;
}

/** Wire letters: n = none, r = read, w = write, b = both. */
export const Access = {
	none: 'n',
	read: 'r',
	write: 'w',
	both: 'b',
} as const;
export type Access = keyof typeof Access;
