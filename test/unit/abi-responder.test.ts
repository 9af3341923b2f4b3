/**
 * The test responder's rule logic (test/support/responder-rules.ts) and its
 * serve loop over a byte stream, with no kernel: a regular file holding
 * FEATURES, MAP and COMMIT records stands in for /dev/dmu/<key>; the
 * responder's answers land in the same file after them.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { decodeBatch, encodeBatch } from '../../src/abi/codec.js';
import { MapFlag, MsgType, ReqFlag } from '../../src/abi/constants.js';
import { type MapRequestMsg, commitDone, mapReply } from '../../src/abi/messages.js';
import { DmuError } from '../../src/errors.js';
import { Responder } from '../support/responder.js';
import { decide, parseRules } from '../support/responder-rules.js';

const BS = 128; // 64 KiB blocks
const req = (block: bigint, flags = 0, id = 1n): MapRequestMsg => ({ type: MsgType.MAP, flags, id, block });
const W = ReqFlag.WRITE;

t.test('no rules: identity, writable, on dev 0', async (t) => {
	const rules = parseRules({});
	const d = decide(rules, req(10n), BS);
	t.same(d, { reply: mapReply({ id: 1n, block: 10n, dev: 0, sector: 1280n, flags: MapFlag.WRITABLE }), delayMs: 0, rule: -1 });
});

t.test('each action builds the reply the header describes', async (t) => {
	const one = (rule: object, r = req(3n, W, 9n)) => decide(parseRules({ rules: [rule] }), r, BS);
	t.same(one({ action: 'identity', ro: true }).reply, mapReply({ id: 9n, block: 3n, sector: 384n, flags: 0 }), 'identity ro');
	t.same(
		one({ action: 'identity', dev: 2, durable: true }).reply,
		mapReply({ id: 9n, block: 3n, dev: 2, sector: 384n, flags: MapFlag.WRITABLE | MapFlag.DURABLE }),
		'identity on dev 2, durable',
	);
	t.same(
		one({ action: 'copy-first' }).reply,
		mapReply({
			id: 9n,
			block: 3n,
			dev: 0,
			sector: 384n,
			srcDev: 1,
			srcSector: 384n,
			flags: MapFlag.WRITABLE | MapFlag.COPY_FIRST,
		}),
		'copy-first from dev 1 to dev 0',
	);
	t.same(
		one({ action: 'temporary' }).reply,
		mapReply({ id: 9n, block: 3n, sector: 384n, flags: MapFlag.WRITABLE | MapFlag.TEMPORARY }),
		'temporary',
	);
	t.same(one({ action: 'zero' }).reply, mapReply({ id: 9n, block: 3n, flags: MapFlag.ZERO }), 'zero');
	t.same(one({ action: 'error', errno: 28 }).reply, mapReply({ id: 9n, block: 3n, flags: MapFlag.ERROR, error: 28 }), 'error 28');
	t.equal(one({ action: 'error' }).reply?.error, 5, 'error defaults to EIO');
	const delayed = one({ action: 'delayed', ms: 250 });
	t.same([delayed.reply?.flags, delayed.delayMs], [MapFlag.WRITABLE, 250], 'delayed identity');
	t.equal(one({ action: 'zero', delayMs: 40 }).delayMs, 40, 'delayMs on any action');
	t.same(one({ action: 'never' }), { reply: null, delayMs: 0, rule: 0 }, 'never');
});

t.test('ranges are inclusive, op filters, first match wins, times counts down', async (t) => {
	const rules = parseRules({
		rules: [
			{ from: 10, to: 19, op: 'write', action: 'copy-first' },
			{ from: 10, to: 19, action: 'identity', ro: true },
			{ from: 20, action: 'error', errno: 5, times: 2 },
		],
		default: 'zero',
	});
	const rule = (b: bigint, flags = 0) => decide(rules, req(b, flags), BS).rule;
	t.same([rule(9n), rule(10n), rule(19n), rule(10n, W), rule(19n, W | ReqFlag.WHOLE_BLOCK)], [-1, 1, 1, 0, 0]);
	t.same([rule(20n), rule(1000n), rule(20n)], [2, 2, -1], 'the error rule stops after 2 matches');
	t.equal(decide(rules, req(0n), BS).reply?.flags, MapFlag.ZERO, 'default action zero');
});

t.test('bad rules are refused with one line naming the key', async (t) => {
	const cases: [unknown, RegExp][] = [
		[[], /top level: expected an object/],
		[{ rulez: [] }, /unknown key "rulez"/],
		[{ rules: {} }, /rules: expected an array/],
		[{ rules: [{ action: 'teleport' }] }, /rules\[0\]: unknown action "teleport"/],
		[{ rules: [{ from: 5, to: 4 }] }, /rules\[0\]: "to" \(4\) is below "from" \(5\)/],
		[{ rules: [{ from: -1 }] }, /rules\[0\]\.from: expected an integer/],
		[{ rules: [{}, { op: 'trim' }] }, /rules\[1\]: op must be/],
		[{ rules: [{ action: 'identity', errno: 5 }] }, /"errno" belongs to action "error"/],
		[{ rules: [{ action: 'identity', ms: 5 }] }, /"ms" belongs to action "delayed"/],
		[{ rules: [{ dev: 16 }] }, /rules\[0\]\.dev: expected an integer from 0 to 15/],
		[{ rules: [{ colour: 'red' }] }, /rules\[0\]: unknown key "colour"/],
		[{ default: { action: 'zero', from: 3 } }, /default: takes no from/],
		[{ commit: { holdSignal: 'SIGTERM' } }, /commit\.holdSignal/],
		[{ commit: { hold: true } }, /commit: unknown key "hold"/],
		[{ commit: { error: -1 } }, /commit\.error/],
	];
	for (const [raw, re] of cases) {
		try {
			parseRules(raw);
			t.fail(`accepted ${JSON.stringify(raw)}`);
		} catch (e) {
			t.ok(e instanceof DmuError && !e.message.includes('\n'), `${JSON.stringify(raw)}: one-line DmuError`);
			t.match((e as Error).message, re);
		}
	}
	t.same(parseRules({ commit: { holdFile: '/tmp/x', holdSignal: 'SIGUSR1', error: 5 } }).commit, {
		error: 5,
		delayMs: 0,
		holdFile: '/tmp/x',
		holdSignal: 'SIGUSR1',
	});
});

t.test('serve loop: one answer batch per read, everything logged', async (t) => {
	const dir = await mkdtemp(join(tmpdir(), 'dmu-responder-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const dev = join(dir, 'dev');
	const logPath = join(dir, 'log.jsonl');
	const input = [
		{ type: MsgType.FEATURES, flags: 0, id: 0n, features: 0x7fn, nrBlocks: 100n, blockSectors: BS, nrDevs: 2, maxBatch: 8, maxRun: 0, replySeq: 0n, allocSeq: 0n },
		req(1n, 0, 11n),
		req(50n, W, 12n),
		req(60n, 0, 13n),
		{ type: MsgType.COMMIT, flags: 0, id: 14n, coveredSeq: 0n, coveredAlloc: 0n },
	] as const;
	await writeFile(dev, encodeBatch([...input]));
	const rules = parseRules({ rules: [{ from: 50, to: 59, action: 'copy-first' }, { from: 60, action: 'never' }] });
	const r = await Responder.start({ device: dev, rules, logPath });
	await r.done; // the file ends: read() returns 0 like a destroyed target
	await r.stop();

	const written = decodeBatch((await readFile(dev)).subarray(input.length * 64));
	t.same(written, [
		mapReply({ id: 11n, block: 1n, sector: 128n, flags: MapFlag.WRITABLE }),
		mapReply({ id: 12n, block: 50n, sector: 6400n, srcDev: 1, srcSector: 6400n, flags: MapFlag.WRITABLE | MapFlag.COPY_FIRST }),
		commitDone(14n),
	]);
	const log = (await readFile(logPath, 'utf8'))
		.trim()
		.split('\n')
		.map((l) => JSON.parse(l));
	t.same(
		log.map((l) => [l.ev, l.type ?? '', l.id ?? '']),
		[
			['open', '', ''],
			['rx', 'MAP', 11],
			['rx', 'MAP', 12],
			['rx', 'MAP', 13],
			['hold', 'MAP', 13],
			['rx', 'COMMIT', 14],
			['tx', 'MAP_REPLY', 11],
			['tx', 'MAP_REPLY', 12],
			['tx', 'COMMIT_DONE', 14],
			['eof', '', ''],
			['stop', '', ''],
		],
	);
	t.same(
		log.filter((l) => l.ev === 'rx').map((l) => [l.batch, l.size]),
		[
			[1, 4],
			[1, 4],
			[1, 4],
			[1, 4],
		],
		'batch number and size on every received message',
	);
	t.match(log[0], { features: { type: 'FEATURES', maxBatch: 8, blockSectors: BS } });
	t.match(log.find((l) => l.ev === 'tx' && l.id === 12), { rule: 0, block: 50, srcDev: 1 });
});
