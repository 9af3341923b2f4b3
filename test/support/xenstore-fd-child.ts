/**
 * Child process for test/unit/xenstore-device.test.ts: runs the client over
 * fd 3 (a blocking socketpair the parent bridges to a real xenstored) with
 * the device transport, the code path used for /dev/xen/xenbus. Prints one
 * JSON line of results, closes, and must then exit on its own: a read left
 * blocked in the pool would keep the process alive.
 */
import { connectFd, isXenstoreError } from '../../src/xenstore/index.js';

const xs = connectFd(3, { label: 'socketpair' });
const out: Record<string, unknown> = {};

await xs.write('/dev-test/a', 'over fd');
out.read = await xs.read('/dev-test/a');
out.enoent = await xs.read('/dev-test/missing').catch((e: unknown) => (isXenstoreError(e) ? e.errno : String(e)));

const w = xs.watch('/dev-test/w', 'tok');
const it = w[Symbol.asyncIterator]();
const first = await it.next();
await xs.write('/dev-test/w/x', '1');
const second = await it.next();
await w.close();
out.events = [first.value, second.value];

out.tx = await xs.transaction(async (tx) => {
	await tx.write('/dev-test/t', 'in tx');
	return tx.read('/dev-test/t');
});

const n = 1000;
const vals = await Promise.all(Array.from({ length: n }, (_, i) => xs.write(`/dev-test/p/${i}`, String(i))));
const reads = await Promise.all(Array.from({ length: n }, (_, i) => xs.read(`/dev-test/p/${i}`)));
out.pipelined = vals.length === n && reads.every((v, i) => v === String(i));

await xs.close();
process.stdout.write(`${JSON.stringify(out)}\n`);
