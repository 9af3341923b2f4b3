/**
 * 10,000 requests in flight at once on one connection: every reply must
 * reach the request it answers (req_id matching), errors included.
 */
import t from 'tap';
import { isXenstoreError } from '../../src/xenstore/index.js';
import { xenstoreFixture } from '../support/xenstore-client.js';

const N = 10_000;

t.test(`${N} pipelined requests on one connection`, async (t) => {
	const fx = await xenstoreFixture(t);
	const xs = await fx.client();

	const t0 = performance.now();
	// All writes issued before any reply is awaited.
	await Promise.all(Array.from({ length: N }, (_, i) => xs.write(`/p/${i % 100}/${i}`, `value-${i}`)));
	const t1 = performance.now();

	// Reads interleaved with reads of missing nodes: replies and errors must
	// land on the right request.
	const results = await Promise.all(
		Array.from({ length: N }, (_, i) =>
			i % 7 === 0
				? xs.read(`/p/missing/${i}`).then(
						() => 'unexpected',
						(e: unknown) => (isXenstoreError(e, 'ENOENT') ? `ENOENT ${i}` : String(e)),
					)
				: xs.read(`/p/${i % 100}/${i}`),
		),
	);
	const t2 = performance.now();

	let wrong = 0;
	for (let i = 0; i < N; i++) {
		const want = i % 7 === 0 ? `ENOENT ${i}` : `value-${i}`;
		if (results[i] !== want) {
			if (wrong++ < 5) t.equal(results[i], want, `request ${i}`);
		}
	}
	t.equal(wrong, 0, `all ${N} reads answered correctly`);
	t.equal((await xs.directory('/p/3')).length, N / 100, 'every write landed');
	t.comment(
		`${N} writes in ${(t1 - t0).toFixed(0)} ms, ${N} reads in ${(t2 - t1).toFixed(0)} ms ` +
			`(${Math.round(N / ((t2 - t1) / 1000))} req/s)`,
	);
});
