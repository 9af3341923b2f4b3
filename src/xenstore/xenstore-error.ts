/**
 * XenstoreError: a request failed. Carries the errno name the daemon sent
 * (like pg-protocol's DatabaseError carries the wire fields) plus the
 * operation and path, so callers test `e.errno === 'ENOENT'` rather than
 * matching message text.
 */
import { DmuError } from '../errors.js';
import { XenstoreErrno } from './messages.js';

/**
 * Errors raised on our side, never sent by a daemon:
 * ECONNREFUSED no daemon at any of the paths tried;
 * ECONNRESET   the connection closed (or was closed) before the reply came;
 * EPROTO       the daemon sent something we cannot parse.
 */
export type LocalErrno = 'ECONNREFUSED' | 'ECONNRESET' | 'EPROTO';

export class XenstoreError extends DmuError {
	constructor(
		/** Wire errno name (ENOENT, EAGAIN ...) or a LocalErrno. */
		readonly errno: XenstoreErrno | LocalErrno,
		/** Operation name, e.g. "READ". */
		readonly op: string,
		/** Path the request was about, if any. */
		readonly path?: string,
		detail?: string,
	) {
		const what = Object.hasOwn(XenstoreErrno, errno) ? XenstoreErrno[errno as XenstoreErrno] : detail;
		super(`DMU_ERR_XENSTORE_${errno}`, `xenstore ${op}${path ? ` ${path}` : ''}: ${errno} (${what ?? errno})`);
	}
}

export const isXenstoreError = (e: unknown, errno?: XenstoreError['errno']): e is XenstoreError =>
	e instanceof XenstoreError && (errno === undefined || e.errno === errno);
