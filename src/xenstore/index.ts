/** Public surface of the xenstore client; see README.md in this folder. */
export {
	type ConnectOptions,
	DEFAULT_SOCKET,
	Transaction,
	type TransactionOptions,
	XENBUS_DEVICE,
	XenstoreClient,
	type WatchOptions,
	connect,
	connectFd,
} from './client.js';
export { Access, type Permission, type WatchEvent, XenstoreErrno } from './messages.js';
export type { Watch } from './watch.js';
export { type LocalErrno, XenstoreError, isXenstoreError } from './xenstore-error.js';
