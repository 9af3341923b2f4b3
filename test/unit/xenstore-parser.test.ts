/**
 * Framing without a daemon: golden bytes for the serializer, and the parser
 * fed frames cut at every possible place, merged, and malformed.
 */
import t from 'tap';
import { HEADER_SIZE, type Message, Op, PAYLOAD_MAX, opName } from '../../src/xenstore/messages.js';
import {
	Parser,
	decodePermission,
	decodePermissions,
	decodeWatchEvent,
	splitStrings,
} from '../../src/xenstore/parser.js';
import * as ser from '../../src/xenstore/serializer.js';

/** Build a frame by hand, independently of serializer.ts. */
function hand(type: number, reqId: number, txId: number, payload: string | Buffer): Buffer {
	const body = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload;
	const h = Buffer.alloc(16);
	h.writeUInt32LE(type, 0);
	h.writeUInt32LE(reqId, 4);
	h.writeUInt32LE(txId, 8);
	h.writeUInt32LE(body.length, 12);
	return Buffer.concat([h, body]);
}

const collect = (p: Parser, ...chunks: Buffer[]): Message[] => {
	const out: Message[] = [];
	for (const c of chunks) p.parse(c, (m) => out.push(m));
	return out;
};

const plain = (m: Message) => ({ type: m.type, reqId: m.reqId, txId: m.txId, payload: m.payload.toString('latin1') });

t.test('wire numbers from xs_wire.h', async (t) => {
	t.equal(Op.READ, 2);
	t.equal(Op.WATCH, 4);
	t.equal(Op.WRITE, 11);
	t.equal(Op.WATCH_EVENT, 15);
	t.equal(Op.ERROR, 16);
	t.equal(Op.RESET_WATCHES, 21);
	t.equal(Op.DIRECTORY_PART, 22);
	t.equal(opName(7), 'TRANSACTION_END');
	t.equal(opName(99), 'OP_99');
	t.equal(HEADER_SIZE, 16);
});

t.test('serializer golden bytes', async (t) => {
	// READ "/a", req 7, tx 3: header then "/a\0".
	t.same(ser.read(7, 3, '/a'), Buffer.from('020000000700000003000000030000002f6100', 'hex'));
	// WRITE: the value is NOT NUL-terminated.
	t.same(ser.write(1, 0, '/k', 'v1'), hand(Op.WRITE, 1, 0, '/k\0v1'));
	t.same(ser.write(1, 0, '/k', Buffer.from([0, 255])), hand(Op.WRITE, 1, 0, Buffer.from('/k\0\0\xff', 'latin1')));
	t.same(ser.watch(9, '/p', 'tok'), hand(Op.WATCH, 9, 0, '/p\0tok\0'));
	t.same(ser.transactionStart(2), hand(Op.TRANSACTION_START, 2, 0, '\0'));
	t.same(ser.transactionEnd(2, 5, true), hand(Op.TRANSACTION_END, 2, 5, 'T\0'));
	t.same(ser.transactionEnd(2, 5, false), hand(Op.TRANSACTION_END, 2, 5, 'F\0'));
	t.same(
		ser.setPermissions(4, 0, '/p', [
			{ domid: 0, access: 'none' },
			{ domid: 5, access: 'read' },
			{ domid: 6, access: 'both' },
		]),
		hand(Op.SET_PERMS, 4, 0, '/p\0n0\0r5\0b6\0'),
	);
	t.same(ser.directoryPart(1, 0, '/d', 4096), hand(Op.DIRECTORY_PART, 1, 0, '/d\x004096\0'));
	t.same(ser.resetWatches(3), hand(Op.RESET_WATCHES, 3, 0, ''));
});

t.test('serializer refuses what the daemon would choke on', async (t) => {
	const big = 'x'.repeat(PAYLOAD_MAX);
	t.throws(() => ser.write(1, 0, '/k', big), { code: 'DMU_ERR_XENSTORE_E2BIG' });
	t.ok(ser.write(1, 0, '/k', 'x'.repeat(PAYLOAD_MAX - 3)), 'exactly PAYLOAD_MAX fits');
	t.throws(() => ser.read(1, 0, '/a\0b'), { code: 'DMU_ERR_XENSTORE_EINVAL' });
	t.throws(() => ser.setPermissions(1, 0, '/p', []), { code: 'DMU_ERR_XENSTORE_EINVAL' });
	t.throws(
		() => ser.setPermissions(1, 0, '/p', [{ domid: -1, access: 'read' }]),
		{ code: 'DMU_ERR_XENSTORE_EINVAL' },
	);
	t.throws(() => ser.read(2 ** 32, 0, '/a'), { code: 'DMU_ERR_XENSTORE_EINVAL' });
});

t.test('parser: one frame split at every byte boundary', async (t) => {
	const f = hand(Op.READ, 42, 0, 'hello');
	for (let cut = 0; cut <= f.length; cut++) {
		const p = new Parser();
		const msgs = collect(p, f.subarray(0, cut), f.subarray(cut));
		t.equal(msgs.length, 1, `cut at ${cut}`);
		t.same(plain(msgs[0]!), { type: Op.READ, reqId: 42, txId: 0, payload: 'hello' });
		t.equal(p.pending, 0);
	}
});

t.test('parser: a frame delivered one byte at a time', async (t) => {
	const f = hand(Op.DIRECTORY, 1, 9, 'a\0b\0');
	const p = new Parser();
	const msgs = collect(p, ...[...f].map((b) => Buffer.from([b])));
	t.same(msgs.map(plain), [{ type: Op.DIRECTORY, reqId: 1, txId: 9, payload: 'a\0b\0' }]);
});

t.test('parser: merged frames and a tail carried over', async (t) => {
	const a = hand(Op.WRITE, 1, 0, 'OK\0');
	const b = hand(Op.WATCH_EVENT, 0, 0, '/x\0tok\0');
	const c = hand(Op.ERROR, 3, 0, 'ENOENT\0');
	const empty = hand(Op.RESET_WATCHES, 4, 0, '');
	const all = Buffer.concat([a, b, c, empty]);
	const p = new Parser();
	// First chunk: a, b, and 5 bytes of c's header.
	const first = collect(p, all.subarray(0, a.length + b.length + 5));
	t.same(first.map((m) => m.reqId), [1, 0]);
	t.equal(p.pending, 5);
	const rest = collect(p, all.subarray(a.length + b.length + 5));
	t.same(rest.map(plain), [
		{ type: Op.ERROR, reqId: 3, txId: 0, payload: 'ENOENT\0' },
		{ type: Op.RESET_WATCHES, reqId: 4, txId: 0, payload: '' },
	]);
	t.equal(p.pending, 0);
});

t.test('parser: payload survives later chunks reusing memory', async (t) => {
	const p = new Parser();
	const chunk = Buffer.concat([hand(Op.READ, 1, 0, 'abc'), hand(Op.READ, 2, 0, 'de').subarray(0, 10)]);
	const msgs = collect(p, chunk);
	chunk.fill(0); // a transport may recycle its buffer
	t.equal(msgs[0]!.payload.length, 3);
	const more = collect(p, hand(Op.READ, 2, 0, 'de').subarray(10));
	t.equal(more[0]!.payload.toString(), 'de', 'the carried tail was copied');
});

t.test('parser: absurd length is a protocol error', async (t) => {
	const h = Buffer.alloc(16);
	h.writeUInt32LE(Op.READ, 0);
	h.writeUInt32LE(0xfffffff0, 12);
	t.throws(() => new Parser().parse(h, () => {}), { code: 'DMU_ERR_XENSTORE_EPROTO' });
});

t.test('payload decoders', async (t) => {
	t.same(splitStrings(Buffer.from('a\0bc\0')), ['a', 'bc']);
	t.same(splitStrings(Buffer.from('')), []);
	t.same(splitStrings(Buffer.from('a\0b')), ['a', 'b'], 'missing final NUL tolerated');
	t.same(decodeWatchEvent(Buffer.from('/local/domain/0\0tok\0')), { path: '/local/domain/0', token: 'tok' });
	t.throws(() => decodeWatchEvent(Buffer.from('/only\0')), { code: 'DMU_ERR_XENSTORE_EPROTO' });
	t.same(decodePermissions(Buffer.from('n0\0r5\0w7\0b65535\0')), [
		{ domid: 0, access: 'none' },
		{ domid: 5, access: 'read' },
		{ domid: 7, access: 'write' },
		{ domid: 65535, access: 'both' },
	]);
	t.throws(() => decodePermission('x1'), { code: 'DMU_ERR_XENSTORE_EPROTO' });
	t.throws(() => decodePermission('r'), { code: 'DMU_ERR_XENSTORE_EPROTO' });
});
