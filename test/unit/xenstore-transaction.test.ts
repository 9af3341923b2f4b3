/**
 * Transactions against a real xenstored: isolation, abandon on throw, and
 * conflicts between two connections resolved by retrying (bounded).
 */
import t from 'tap';
import { xenstoreFixture } from '../support/xenstore-client.js';

t.test('writes are invisible outside until commit', async (t) => {
	const fx = await xenstoreFixture(t);
	const a = await fx.client();
	const b = await fx.client();
	await a.transaction(async (tx) => {
		t.ok(tx.txId > 0, 'transaction has an id');
		await tx.write('/iso/k', 'v');
		t.equal(await tx.read('/iso/k'), 'v', 'visible inside');
		t.equal(await b.tryRead('/iso/k'), undefined, 'invisible to another connection');
		t.equal(await a.tryRead('/iso/k'), undefined, 'invisible outside the tx on the same connection');
	});
	t.equal(await b.read('/iso/k'), 'v', 'visible after commit');
});

t.test('a throwing function abandons the transaction', async (t) => {
	const fx = await xenstoreFixture(t);
	const a = await fx.client();
	await t.rejects(
		a.transaction(async (tx) => {
			await tx.write('/ab/k', 'v');
			throw new Error('changed my mind');
		}),
		{ message: 'changed my mind' },
	);
	t.equal(await a.tryRead('/ab/k'), undefined, 'nothing written');
	await t.rejects(
		a.transaction((tx) => tx.read('/ab/missing')),
		{ code: 'DMU_ERR_XENSTORE_ENOENT' },
		'daemon errors inside pass through',
	);
});

t.test('a conflicting commit retries and the result is consistent', async (t) => {
	const fx = await xenstoreFixture(t);
	const a = await fx.client();
	const b = await fx.client();
	await a.write('/cnt', '0');
	let attempts = 0;
	const result = await a.transaction(async (tx) => {
		attempts++;
		const v = Number(await tx.read('/cnt'));
		// Another connection changes what we read, mid-transaction, once.
		if (attempts === 1) await b.write('/cnt', '10');
		await tx.write('/cnt', String(v + 1));
		return v + 1;
	});
	t.equal(attempts, 2, 'first commit answered EAGAIN, second succeeded');
	t.equal(result, 11, 'the retry saw the other write');
	t.equal(await b.read('/cnt'), '11', 'no lost update');
});

t.test('concurrent increments from two connections lose nothing', async (t) => {
	const fx = await xenstoreFixture(t);
	const conns = [await fx.client(), await fx.client()];
	await conns[0]!.write('/n', '0');
	let commits = 0;
	let runs = 0;
	const perConn = 5;
	await Promise.all(
		conns.flatMap((c) =>
			Array.from({ length: perConn }, () =>
				c
					.transaction(
						async (tx) => {
							runs++;
							const v = Number(await tx.read('/n'));
							await tx.write('/n', String(v + 1));
						},
						{ retries: 64 },
					)
					.then(() => commits++),
			),
		),
	);
	t.equal(commits, conns.length * perConn);
	t.equal(await conns[1]!.read('/n'), String(conns.length * perConn), 'every increment counted once');
	t.ok(runs > commits, `conflicts happened and were retried (${runs} runs for ${commits} commits)`);
});

t.test('retries are bounded', async (t) => {
	const fx = await xenstoreFixture(t);
	const a = await fx.client();
	const b = await fx.client();
	await a.write('/hot', '0');
	let attempts = 0;
	await t.rejects(
		a.transaction(
			async (tx) => {
				attempts++;
				await tx.read('/hot');
				await b.write('/hot', String(attempts)); // always conflict
				await tx.write('/hot', 'mine');
			},
			{ retries: 3 },
		),
		{ code: 'DMU_ERR_XENSTORE_EAGAIN' },
	);
	t.equal(attempts, 4, 'one try plus three retries');
	t.not(await a.read('/hot'), 'mine', 'the losing write never landed');
});
