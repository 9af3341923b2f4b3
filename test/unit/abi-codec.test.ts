/**
 * src/abi/codec.ts: round trips of every message type and batches, and
 * rejection of what the kernel would never send (or never accept).
 */
import t from 'tap';
import { AbiError, AbiErrorCode } from '../../src/abi/abi-error.js';
import { decodeBatch, decodeMessage, encodeBatch, encodeMessage } from '../../src/abi/codec.js';
import { DMU_MSG_SIZE, MapFlag, MsgType, Payload, PayloadOf } from '../../src/abi/constants.js';
import { type DmuMessage, commitDone, getFeatures, invalidate, mapReply } from '../../src/abi/messages.js';
import { GOLDEN_MESSAGES } from '../abi/golden-values.js';

const all = Object.values(GOLDEN_MESSAGES);

/** What fn throws, reduced to the parts the tests check. */
function abiErrorOf(fn: () => unknown): { abi: boolean; code: string; index: number; oneLine: boolean } | 'no error' {
	try {
		fn();
		return 'no error';
	} catch (e) {
		const err = e as AbiError;
		return { abi: e instanceof AbiError, code: err.code, index: err.index, oneLine: !err.message.includes('\n') };
	}
}
const expectAbi = (code: AbiErrorCode, index: number) => ({ abi: true, code, index, oneLine: true });

t.test('every type round-trips, one by one and as a batch', async (t) => {
	for (const m of all) t.same(decodeMessage(encodeMessage(m)), m, `type 0x${m.type.toString(16)}`);
	const batch = encodeBatch(all);
	t.equal(batch.length, all.length * DMU_MSG_SIZE, 'batch is 64 bytes a message');
	t.same(decodeBatch(batch), all, 'batch decodes in order');
	t.same(decodeBatch(Buffer.alloc(0)), [], 'empty batch');
});

t.test('extreme values survive', async (t) => {
	const max = (1n << 64n) - 1n;
	const m = mapReply({
		id: max,
		block: max,
		sector: max,
		srcSector: 0n,
		flags: 0xffffffff,
		dev: 0xffffffff,
		srcDev: 0,
		error: -0x80000000,
	});
	t.same(decodeMessage(encodeMessage(m)), m);
	t.same(decodeMessage(encodeMessage({ ...m, error: 0x7fffffff })), { ...m, error: 0x7fffffff });
});

t.test('builders fill zeros and encode to valid messages', async (t) => {
	const r = mapReply({ id: 7n, block: 3n, flags: MapFlag.ZERO });
	t.same(r, { type: MsgType.MAP_REPLY, id: 7n, block: 3n, flags: MapFlag.ZERO, sector: 0n, srcSector: 0n, dev: 0, srcDev: 0, error: 0, run: 0 });
	for (const m of [r, commitDone(9n, 5), invalidate(1n, 10n, 20n), getFeatures(4n)] as DmuMessage[]) {
		t.same(decodeMessage(encodeMessage(m)), m, `0x${m.type.toString(16)}`);
	}
});

t.test('encode writes reserved bytes as zero, even into a dirty buffer', async (t) => {
	const buf = Buffer.alloc(2 * DMU_MSG_SIZE, 0xee);
	encodeMessage(GOLDEN_MESSAGES.COMMIT, buf, DMU_MSG_SIZE);
	t.equal(buf.subarray(0, DMU_MSG_SIZE).toString('hex'), 'ee'.repeat(64), 'bytes before the message untouched');
	t.equal(buf.subarray(DMU_MSG_SIZE).toString('hex'), encodeMessage(GOLDEN_MESSAGES.COMMIT).toString('hex'));
	t.same(decodeMessage(buf, DMU_MSG_SIZE), GOLDEN_MESSAGES.COMMIT);
});

t.test('truncated and oversized batches are rejected', async (t) => {
	const two = encodeBatch([GOLDEN_MESSAGES.MAP, GOLDEN_MESSAGES.COMMIT]);
	t.same(abiErrorOf(() => decodeBatch(two.subarray(0, 100))), expectAbi(AbiErrorCode.LENGTH, 1), '100 bytes');
	t.same(abiErrorOf(() => decodeBatch(two.subarray(0, 63))), expectAbi(AbiErrorCode.LENGTH, 0), '63 bytes');
	t.same(abiErrorOf(() => decodeBatch(Buffer.concat([two, Buffer.alloc(1)]))), expectAbi(AbiErrorCode.LENGTH, 2), '129 bytes');
	t.same(abiErrorOf(() => decodeMessage(two.subarray(0, 40))), expectAbi(AbiErrorCode.LENGTH, 0), 'single message of 40 bytes');
	t.same(abiErrorOf(() => decodeMessage(two, 100)), expectAbi(AbiErrorCode.LENGTH, 0), 'message starting 28 bytes before the end');
});

t.test('unknown types are rejected, with the index of the message', async (t) => {
	for (const type of [0, 0x07, 0x7f, 0x80, 0x86, 0x102, 0xffffffff]) {
		const batch = encodeBatch([GOLDEN_MESSAGES.MAP, GOLDEN_MESSAGES.MAP]);
		batch.writeUInt32LE(type, DMU_MSG_SIZE);
		t.same(abiErrorOf(() => decodeBatch(batch)), expectAbi(AbiErrorCode.TYPE, 1), `type 0x${type.toString(16)}`);
	}
	t.same(abiErrorOf(() => encodeMessage({ ...GOLDEN_MESSAGES.COMMIT, type: 0x42 } as unknown as DmuMessage)), expectAbi(AbiErrorCode.TYPE, 0), 'encode of type 0x42');
});

t.test('every non-zero reserved byte of every type is rejected', async (t) => {
	let checked = 0;
	for (const m of all) {
		const payload = PayloadOf[m.type];
		const fields = payload ? Payload[payload].fields.map((f) => ({ ...f, at: 16 + f.offset })) : [{ kind: 'reserved', at: 16, size: 48 }];
		for (const f of fields) {
			if (f.kind !== 'reserved') continue;
			for (let i = f.at; i < f.at + f.size; i++) {
				const batch = encodeBatch([m, m]);
				batch[DMU_MSG_SIZE + i] = 0x01;
				try {
					decodeBatch(batch);
					t.fail(`0x${m.type.toString(16)} byte ${i} accepted`);
				} catch (e) {
					if (!(e instanceof AbiError) || e.code !== AbiErrorCode.RESERVED || e.index !== 1) {
						t.fail(`0x${m.type.toString(16)} byte ${i}: wrong error ${String(e)}`);
					}
				}
				checked++;
				// ...and accepted when the caller opts out of the check.
				t.same(decodeBatch(batch, { checkReserved: false })[1], m);
			}
		}
	}
	// 11 types; reserved bytes per type from the header.
	t.equal(checked, 0 + 40 + 32 + 28 + 36 + 48 + 8 + 44 + 28 + 16 + 48, 'every reserved byte tried');
	t.same(abiErrorOf(() => {
			const b = encodeMessage(GOLDEN_MESSAGES.MAP_REPLY);
			b[63] = 0x80;
			decodeMessage(b);
		}), expectAbi(AbiErrorCode.RESERVED, 0), 'MAP_REPLY reserved1 top byte');
});

t.test('fields that do not fit are refused on encode', async (t) => {
	const r = GOLDEN_MESSAGES.MAP_REPLY;
	const cases: [string, DmuMessage][] = [
		['u64 negative', { ...r, block: -1n }],
		['u64 overflow', { ...r, sector: 1n << 64n }],
		['u64 as number', { ...r, sector: 5 as unknown as bigint }],
		['u32 negative', { ...r, dev: -1 }],
		['u32 overflow', { ...r, flags: 2 ** 32 }],
		['u32 fraction', { ...r, srcDev: 1.5 }],
		['s32 overflow', { ...r, error: 2 ** 31 }],
		['s32 underflow', { ...r, error: -(2 ** 31) - 1 }],
		['missing field', { type: MsgType.MAP_REPLY, flags: 0, id: 1n } as unknown as DmuMessage],
	];
	for (const [what, m] of cases) t.same(abiErrorOf(() => encodeBatch([GOLDEN_MESSAGES.COMMIT_DONE, m])), expectAbi(AbiErrorCode.FIELD, 1), what);
});
