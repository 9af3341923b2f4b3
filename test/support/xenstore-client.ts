/**
 * Test fixture: a private real xenstored plus clients connected to it, all
 * torn down with the test.
 */
import type { Test } from 'tap';
import { type XenstoreClient, connect } from '../../src/xenstore/index.js';
import { type Xenstored, startXenstored } from './xenstored.js';

export interface XenstoreFixture {
	daemon: Xenstored;
	/** A new connection to the fixture's daemon (closed at teardown). */
	client(): Promise<XenstoreClient>;
}

export async function xenstoreFixture(t: Test): Promise<XenstoreFixture> {
	const daemon = await startXenstored();
	const clients: XenstoreClient[] = [];
	t.teardown(async () => {
		await Promise.all(clients.map((c) => c.close()));
		await daemon.stop();
	});
	return {
		daemon,
		client: async () => {
			const c = await connect({ path: daemon.socketPath });
			clients.push(c);
			return c;
		},
	};
}
