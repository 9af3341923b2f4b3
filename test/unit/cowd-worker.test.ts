/**
 * cowd's Worker over a real dscow image. The control device itself only
 * exists with the kernel target (test/vm covers it); here a stand-in hands
 * the worker batches the way the kernel would and keeps its answers, to
 * check what the worker promises about order: maps may be answered
 * concurrently, but a COMMIT sees exactly the maps before it in its batch.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import t from 'tap';
import type { ControlDevice } from '../../src/abi/control.js';
import { MapFlag, MsgType, ReqFlag } from '../../src/abi/constants.js';
import type { DaemonMessage, DmuMessage, KernelMessage } from '../../src/abi/messages.js';
import { Worker } from '../../src/cowd/worker.js';
import { plugin } from '../../src/plugins/dscow/index.js';

/** Replays batches, collects answers, ends like a removed target. */
class ScriptedControl {
	readonly written: DaemonMessage[][] = [];
	constructor(private readonly batches: KernelMessage[][]) {}
	async readBatch(): Promise<DmuMessage[]> {
		return this.batches.shift() ?? [];
	}
	async writeBatch(msgs: readonly DaemonMessage[]): Promise<void> {
		this.written.push([...msgs]);
	}
	async close(): Promise<void> {}
}

/** A write to a never-touched block; `whole` when it covers the block. */
const write = (id: number, block: number, whole: boolean): KernelMessage => ({
	type: MsgType.MAP,
	flags: whole ? ReqFlag.WRITE | ReqFlag.WHOLE_BLOCK : ReqFlag.WRITE,
	id: BigInt(id),
	block: BigInt(block),
});
const commit = (id: number): KernelMessage => ({ type: MsgType.COMMIT, flags: 0, id: BigInt(id) });

t.test('a COMMIT in a batch commits the maps before it and none after it', async (t) => {
	const dir = await mkdtemp(join(tmpdir(), 'cowd-worker-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const path = join(dir, 'disk.dscow');
	await plugin.create(path, { size: 4n << 20n }); // 64 blocks, no base
	await plugin.open(path); // and a crash: the image is left dirty
	const image = await plugin.open(path);
	// After a crash a partial write to a hole first zero-fills the block
	// (a write and an fsync): the maps before the commit are the slow ones,
	// so a commit that did not wait for them would miss their bits.
	const before = Array.from({ length: 20 }, (_, i) => write(i, i, false));
	const after = Array.from({ length: 20 }, (_, i) => write(100 + i, 40 + i, true));
	const ctl = new ScriptedControl([[...before, commit(50), ...after]]);
	const worker = new Worker(ctl as unknown as ControlDevice, image, pino({ level: 'silent' }));
	t.equal(await worker.run(), 'target-gone');

	const answers = ctl.written.flat();
	t.equal(answers.length, 41, 'one answer per request');
	t.same(
		answers.map((a) => Number(a.id)),
		[...before, commit(50), ...after].map((m) => Number(m.id)),
		'answers in request order',
	);
	const done = answers.find((a) => a.type === MsgType.COMMIT_DONE);
	t.match(done, { error: 0 }, 'commit succeeded');
	t.ok(answers.every((a) => a.type !== MsgType.MAP_REPLY || (a.flags & MapFlag.ERROR) === 0), 'no map failed');

	// What a crash right now would keep: only the committed bitmap counts.
	const info = await plugin.info(path);
	t.equal(info.allocatedBlocks, 20n, 'blocks 0-19 committed, 40-59 not yet');
	const report = await plugin.check(path);
	t.same(report.corruptions, []);
	await image.close();
	t.equal((await plugin.info(path)).allocatedBlocks, 40n, 'all 40 after a clean close');
});
