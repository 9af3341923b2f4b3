/**
 * The node operations, shared by a client (outside any transaction, tx_id 0)
 * and by a Transaction (its own tx_id): same calls, same meaning, only the
 * header differs.
 */
import type { Connection } from './connection.js';
import { Op, type Permission } from './messages.js';
import { decodePermissions, firstString, splitStrings } from './parser.js';
import * as ser from './serializer.js';
import { XenstoreError, isXenstoreError } from './xenstore-error.js';

/** Restarts of a paged listing whose directory kept changing under us. */
const DIRECTORY_PART_RESTARTS = 8;

export class XenstoreOps {
	/** @internal */
	protected readonly conn: Connection;
	/** Transaction id in every request's header; 0 outside a transaction. */
	readonly txId: number;

	/** @internal use connect() or client.transaction(). */
	constructor(conn: Connection, txId: number) {
		this.conn = conn;
		this.txId = txId;
	}

	/** The node's value as UTF-8. Throws XenstoreError ENOENT if absent. */
	async read(path: string): Promise<string> {
		return (await this.readBuffer(path)).toString('utf8');
	}

	/** The node's value as raw bytes (values need not be text). */
	readBuffer(path: string): Promise<Buffer> {
		return this.conn.request(Op.READ, path, (id) => ser.read(id, this.txId, path));
	}

	/** Like read(), but undefined instead of ENOENT. */
	async tryRead(path: string): Promise<string | undefined> {
		try {
			return await this.read(path);
		} catch (e) {
			if (isXenstoreError(e, 'ENOENT')) return undefined;
			throw e;
		}
	}

	/** Creates the node and missing parents, or replaces its value. */
	async write(path: string, value: string | Buffer): Promise<void> {
		await this.conn.request(Op.WRITE, path, (id) => ser.write(id, this.txId, path, value));
	}

	/** Creates an empty node (and parents); no error if it exists. */
	async mkdir(path: string): Promise<void> {
		await this.conn.request(Op.MKDIR, path, (id) => ser.mkdir(id, this.txId, path));
	}

	/** Removes the node and everything below it. ENOENT if its parent is absent. */
	async rm(path: string): Promise<void> {
		await this.conn.request(Op.RM, path, (id) => ser.rm(id, this.txId, path));
	}

	/**
	 * Names (not paths) of the node's children. A listing too big for one
	 * reply (E2BIG) is fetched in pages with DIRECTORY_PART.
	 */
	async directory(path: string): Promise<string[]> {
		try {
			return splitStrings(await this.conn.request(Op.DIRECTORY, path, (id) => ser.directory(id, this.txId, path)));
		} catch (e) {
			if (!isXenstoreError(e, 'E2BIG')) throw e;
		}
		return this.#directoryPaged(path);
	}

	/**
	 * DIRECTORY_PART reply: "<generation>\0" then children each ending in
	 * NUL, starting at byte `offset` of the whole listing; an extra NUL
	 * (an empty name) marks the end. If the generation changes between
	 * pages the directory changed, and we start over.
	 */
	async #directoryPaged(path: string): Promise<string[]> {
		for (let attempt = 0; attempt < DIRECTORY_PART_RESTARTS; attempt++) {
			const parts: Buffer[] = [];
			let generation: string | undefined;
			let offset = 0;
			for (;;) {
				const reply = await this.conn.request(Op.DIRECTORY_PART, path, (id) =>
					ser.directoryPart(id, this.txId, path, offset),
				);
				const gen = firstString(reply);
				if (generation !== undefined && gen !== generation) break;
				generation = gen;
				const body = reply.subarray(Buffer.byteLength(gen) + 1);
				const last = isListEnd(body);
				const names = last ? body.subarray(0, body.length - 1) : body;
				parts.push(names);
				offset += names.length;
				if (last) return splitStrings(Buffer.concat(parts));
			}
		}
		throw new XenstoreError('EAGAIN', 'DIRECTORY_PART', path, 'directory keeps changing');
	}

	/** Owner first (its access applies to every domain not listed), then grants. */
	async getPermissions(path: string): Promise<Permission[]> {
		return decodePermissions(
			await this.conn.request(Op.GET_PERMS, path, (id) => ser.getPermissions(id, this.txId, path)),
		);
	}

	/** Replaces the node's permission list (see getPermissions for its shape). */
	async setPermissions(path: string, perms: readonly Permission[]): Promise<void> {
		await this.conn.request(Op.SET_PERMS, path, (id) => ser.setPermissions(id, this.txId, path, perms));
	}
}

/** The last page ends with an empty name: "...\0\0", or is just "\0". */
function isListEnd(body: Buffer): boolean {
	if (body.length <= 1) return true;
	return body[body.length - 1] === 0 && body[body.length - 2] === 0;
}
