/**
 * src/abi/control.ts on the host, where there is no dm-userspace device:
 * regular files and FIFOs stand in for the byte stream (read(2)/write(2)
 * behave the same for whole messages). The real device is exercised by the
 * VM tests through test/support/responder.ts.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { encodeBatch } from '../../src/abi/codec.js';
import { MsgType, ReqFlag } from '../../src/abi/constants.js';
import { ControlDevice, ControlErrorCode, controlError } from '../../src/abi/control.js';
import { type FeaturesMsg, type MapRequestMsg, commitDone, mapReply } from '../../src/abi/messages.js';
import { DmuError } from '../../src/errors.js';

const run = promisify(execFile);
const dir = await mkdtemp(join(tmpdir(), 'dmu-abi-control-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));

const features = (maxBatch: number): FeaturesMsg => ({
	type: MsgType.FEATURES,
	flags: 0,
	id: 0n,
	features: 0x7fn,
	nrBlocks: 1000n,
	blockSectors: 128,
	nrDevs: 2,
	maxBatch,
	maxRun: 0,
	replySeq: 0n,
	allocSeq: 0n,
});
const map = (id: bigint, block: bigint): MapRequestMsg => ({ type: MsgType.MAP, flags: ReqFlag.WRITE, id, block });

async function errorOf(p: Promise<unknown>) {
	try {
		await p;
		return 'no error';
	} catch (e) {
		return { dmu: e instanceof DmuError, code: (e as DmuError).code, oneLine: !(e as Error).message.includes('\n') };
	}
}

t.test('a missing device is NO_TARGET, one line', async (t) => {
	t.same(await errorOf(ControlDevice.open(join(dir, 'nope'))), { dmu: true, code: ControlErrorCode.NO_TARGET, oneLine: true });
});

t.test('kernel errnos become clear DmuErrors', async (t) => {
	const err = (code: string) => Object.assign(new Error(`${code}: x`), { code });
	t.equal(controlError(err('EBUSY'), '/dev/dmu/k', 'open').code, ControlErrorCode.BUSY);
	t.match(controlError(err('EBUSY'), '/dev/dmu/k', 'open').message, /another daemon/);
	t.equal(controlError(err('EACCES'), '/dev/dmu/k', 'open').code, ControlErrorCode.PERM);
	t.match(controlError(err('EPERM'), '/dev/dmu/k', 'open').message, /CAP_SYS_ADMIN/);
	t.equal(controlError(err('ENOENT'), '/dev/dmu/k', 'open').code, ControlErrorCode.NO_TARGET);
	t.equal(controlError(err('EIO'), '/dev/dmu/k', 'read').code, ControlErrorCode.IO);
});

t.test('open reads FEATURES, then batches of up to maxBatch, then [] at end', async (t) => {
	const path = join(dir, 'stream');
	const maps = [1n, 2n, 3n, 4n, 5n].map((b) => map(b + 100n, b));
	await writeFile(path, encodeBatch([features(3), ...maps]));
	const dev = await ControlDevice.open(path);
	t.same(dev.features, features(3));
	t.ok(dev.has(0x20n) && !dev.has(0x80n), 'has() tests feature bits');
	t.same(await dev.readBatch(), maps.slice(0, 3), 'first batch holds maxBatch messages');
	t.same(await dev.readBatch(), maps.slice(3), 'second batch the rest');
	t.same(await dev.readBatch(), [], 'end of stream');
	await dev.close();
	t.same(await errorOf(dev.readBatch()), { dmu: true, code: ControlErrorCode.CLOSED, oneLine: true });
});

t.test('a stream that does not start with FEATURES is refused', async (t) => {
	const path = join(dir, 'bad');
	await writeFile(path, encodeBatch([map(1n, 1n)]));
	t.same(await errorOf(ControlDevice.open(path)), { dmu: true, code: ControlErrorCode.PROTOCOL, oneLine: true });
	await writeFile(path, '');
	t.same(await errorOf(ControlDevice.open(path)), { dmu: true, code: ControlErrorCode.PROTOCOL, oneLine: true });
});

t.test('writeBatch writes the encoded batch', async (t) => {
	const path = join(dir, 'out');
	await writeFile(path, encodeBatch([features(8)]));
	const dev = await ControlDevice.open(path);
	const replies = [mapReply({ id: 5n, block: 7n, flags: 1, sector: 896n }), commitDone(6n)];
	await dev.writeBatch(replies);
	await dev.close();
	const bytes = await readFile(path);
	t.equal(bytes.subarray(64).toString('hex'), encodeBatch(replies).toString('hex'));
});

t.test('close() wakes its own blocked read instead of leaving it in the kernel', async (t) => {
	const fifo = join(dir, 'fifo');
	await run('mkfifo', [fifo]);
	// Keep our own end open so the FIFO never reports end of file.
	const keeper = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
	fs.writeSync(keeper, encodeBatch([features(4)]));
	const dev = await ControlDevice.open(fifo);
	const pending = dev.readBatch();
	await new Promise((r) => setTimeout(r, 100));
	const start = Date.now();
	await dev.close();
	t.ok(Date.now() - start < 1500, 'close did not wait for its timeout');
	t.same(await pending, [], 'the pending read resolves empty');
	fs.closeSync(keeper);
});
