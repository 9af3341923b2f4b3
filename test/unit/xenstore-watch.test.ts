/**
 * Watches against a real xenstored: events caused by another connection,
 * the registration event, tokens, and every way a watch can end.
 */
import t from 'tap';
import pino from 'pino';
import { type WatchEvent, connect } from '../../src/xenstore/index.js';
import { xenstoreFixture } from '../support/xenstore-client.js';

/** Next event, or a failure after `ms` (so a missing event fails, not hangs). */
async function nextEvent(it: AsyncIterator<WatchEvent>, ms = 5000): Promise<IteratorResult<WatchEvent>> {
	let timer: NodeJS.Timeout | undefined;
	const timeout = new Promise<never>((_, reject) => {
		timer = setTimeout(() => reject(new Error(`no watch event within ${ms} ms`)), ms);
	});
	try {
		return await Promise.race([it.next(), timeout]);
	} finally {
		clearTimeout(timer);
	}
}

t.test("a watch fires on another connection's write", async (t) => {
	const fx = await xenstoreFixture(t);
	const watcher = await fx.client();
	const writer = await fx.client();
	const w = watcher.watch('/backend/vbd', 'my-token');
	await w.ready;
	t.same((await nextEvent(w)).value, { path: '/backend/vbd', token: 'my-token' }, 'registration event');

	await writer.write('/backend/vbd/5/768/params', 'x');
	t.same((await nextEvent(w)).value, { path: '/backend/vbd/5/768/params', token: 'my-token' });

	await writer.write('/backend/other', 'y'); // not below the watched path
	await writer.rm('/backend/vbd/5');
	t.same((await nextEvent(w)).value, { path: '/backend/vbd/5', token: 'my-token' }, 'rm fires, sibling did not');
	await w.close();
});

t.test('for await, break unregisters; generated tokens are distinct', async (t) => {
	const fx = await xenstoreFixture(t);
	const xs = await fx.client();
	const writer = await fx.client();
	const a = xs.watch('/a');
	const b = xs.watch('/a');
	t.not(a.token, b.token);
	await Promise.all([a.ready, b.ready]);

	const seen: string[] = [];
	const pending = (async () => {
		for await (const ev of a) {
			seen.push(ev.path);
			if (ev.path === '/a/3') break;
		}
	})();
	for (const i of [1, 2, 3]) await writer.write(`/a/${i}`, '');
	await pending;
	t.same(seen, ['/a', '/a/1', '/a/2', '/a/3'], 'registration event then one per write, in order');
	t.same(await a.next(), { value: undefined, done: true }, 'ended after break');

	// b is independent: still registered and holding its events.
	const bPaths: string[] = [];
	for (let i = 0; i < 4; i++) bPaths.push((await nextEvent(b)).value!.path);
	t.same(bPaths, ['/a', '/a/1', '/a/2', '/a/3']);
	await b.close();
});

t.test('aborting the signal ends the iteration and unwatches', async (t) => {
	const fx = await xenstoreFixture(t);
	// Capture the connection's debug log: an event for a watch we no longer
	// hold is logged as "watch event for no watch".
	const lines: string[] = [];
	const logger = pino({ level: 'debug' }, { write: (s: string) => lines.push(s) });
	const xs = await connect({ path: fx.daemon.socketPath, logger });
	t.teardown(() => xs.close());
	const writer = await fx.client();
	const ac = new AbortController();
	const w = xs.watch('/ab', { signal: ac.signal });
	await w.ready;
	const got: string[] = [];
	const loop = (async () => {
		for await (const ev of w) {
			got.push(ev.path);
			if (got.length === 2) ac.abort();
		}
	})();
	await writer.write('/ab/x', '1');
	await loop;
	t.same(got, ['/ab', '/ab/x'], 'loop ended quietly on abort');

	// The UNWATCH may still be in flight when the loop ends: a round trip
	// on the watching connection settles it.
	await xs.read('/ab');
	await writer.write('/ab/y', '2');
	// Any event for xs was queued before the reply to this read.
	await xs.read('/ab');
	t.same(
		lines.filter((l) => l.includes('watch event for no watch')),
		[],
		'the daemon sent no more events: the watch was removed',
	);

	const pre = new AbortController();
	pre.abort();
	const never = xs.watch('/ab', { signal: pre.signal });
	t.same(await nextEvent(never), { value: undefined, done: true }, 'an already-aborted signal ends at once');
});

t.test('a watch still registered does deliver (control for the test above)', async (t) => {
	const fx = await xenstoreFixture(t);
	const xs = await fx.client();
	const writer = await fx.client();
	const w = xs.watch('/ctl');
	await nextEvent(w);
	await writer.write('/ctl/y', '2');
	await xs.read('/ctl');
	t.same((await nextEvent(w, 100)).value?.path, '/ctl/y', 'event arrived before the read reply');
	await w.close();
});

t.test('waiting next() is released by abort', async (t) => {
	const fx = await xenstoreFixture(t);
	const xs = await fx.client();
	const ac = new AbortController();
	const w = xs.watch('/idle', { signal: ac.signal });
	await nextEvent(w); // registration event
	const waiting = w.next();
	setTimeout(() => ac.abort(), 20);
	t.same(await waiting, { value: undefined, done: true });
});

t.test('special paths: @introduceDomain registers', async (t) => {
	const fx = await xenstoreFixture(t);
	const xs = await fx.client();
	const w = xs.watch('@introduceDomain');
	t.same((await nextEvent(w)).value?.path, '@introduceDomain');
	await w.close();
});

t.test('a bad watch path rejects ready and the iteration', async (t) => {
	const fx = await xenstoreFixture(t);
	const xs = await fx.client();
	const w = xs.watch('no//good');
	await t.rejects(w.ready, { code: 'DMU_ERR_XENSTORE_EINVAL' });
	await t.rejects(w.next(), { code: 'DMU_ERR_XENSTORE_EINVAL' });
});

t.test('closing the client ends watches quietly; a dying daemon ends them with an error', async (t) => {
	const fx = await xenstoreFixture(t);
	const xs = await fx.client();
	const w = xs.watch('/c');
	await nextEvent(w);
	const waiting = w.next();
	await xs.close();
	t.same(await waiting, { value: undefined, done: true });

	const other = await fx.client();
	const w2 = other.watch('/c');
	await nextEvent(w2);
	const waiting2 = w2.next();
	process.kill(fx.daemon.pid, 'SIGKILL');
	await t.rejects(waiting2, { code: 'DMU_ERR_XENSTORE_ECONNRESET' });
});

t.test('a watch path too long for a frame rejects ready, nothing leaks', async (t) => {
	const fx = await xenstoreFixture(t);
	const xs = await fx.client();
	const w = xs.watch(`/${'x'.repeat(5000)}`);
	await t.rejects(w.ready, { code: 'DMU_ERR_XENSTORE_E2BIG' });
	t.same(await w.next().catch((e: { errno: string }) => e.errno), 'E2BIG');
	await xs.write('/still', 'usable');
	t.equal(await xs.read('/still'), 'usable');
});
