/**
 * cowd's Worker over a real dscow image. The control device itself only
 * exists with the kernel target (test/vm covers it); here a stand-in hands
 * the worker batches the way the kernel would and keeps its answers, to
 * check what the worker promises: maps may be answered concurrently, a
 * COMMIT is a barrier in its batch, and a COMMIT makes durable exactly the
 * allocations of the replies its coveredSeq covers (the kernel numbers the
 * replies it accepts, starting after FEATURES.replySeq).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import t from 'tap';
import type { ControlDevice } from '../../src/abi/control.js';
import { Feature, MapFlag, MsgType, ReqFlag } from '../../src/abi/constants.js';
import type { DaemonMessage, DmuMessage, KernelMessage } from '../../src/abi/messages.js';
import { Worker } from '../../src/cowd/worker.js';
import { plugin } from '../../src/plugins/dscow/index.js';

/** Replays batches (after an optional check before each), collects answers, ends like a removed target. */
class ScriptedControl {
	readonly written: DaemonMessage[][] = [];
	readonly features: { replySeq: bigint; features: bigint; maxRun: number };
	#next = 0;
	constructor(
		private readonly batches: KernelMessage[][],
		replySeq = 0n,
		private readonly before: (batch: number) => Promise<void> = async () => {},
		maxRun = 0,
	) {
		this.features = { replySeq, features: maxRun ? Feature.MAP_RUN : 0n, maxRun };
	}
	async readBatch(): Promise<DmuMessage[]> {
		const i = this.#next++;
		if (i >= this.batches.length) return [];
		await this.before(i);
		return this.batches[i]!;
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
const commit = (id: number, coveredSeq: bigint): KernelMessage => ({ type: MsgType.COMMIT, flags: 0, id: BigInt(id), coveredSeq, coveredAlloc: 0n });
const range = (n: number, f: (i: number) => KernelMessage) => Array.from({ length: n }, (_, i) => f(i));

async function dirtyImage(t: { teardown(fn: () => unknown): void }) {
	const dir = await mkdtemp(join(tmpdir(), 'cowd-worker-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const path = join(dir, 'disk.dscow');
	await plugin.create(path, { size: 4n << 20n }); // 64 blocks, no base
	await plugin.open(path); // and a crash: the image is left dirty
	return path;
}
const onDisk = async (path: string) => (await plugin.info(path)).allocatedBlocks;

t.test('a COMMIT is a barrier in its batch, and covers only replies the kernel had', async (t) => {
	const path = await dirtyImage(t);
	const image = await plugin.open(path);
	// After a crash a partial write to a hole first zero-fills the block (a
	// write and an fsync): the maps before the commit are the slow ones, so
	// a commit that did not wait for them would see their bits.
	const before = range(20, (i) => write(i, i, false));
	const after = range(20, (i) => write(100 + i, 40 + i, true));
	// The kernel cannot have accepted replies it has not been sent: this
	// COMMIT covers none of the maps around it.
	const ctl = new ScriptedControl([[...before, commit(50, 0n), ...after]]);
	const worker = new Worker(ctl as unknown as ControlDevice, image, pino({ level: 'silent' }));
	t.equal(await worker.run(), 'target-gone');

	const answers = ctl.written.flat();
	t.same(
		answers.map((a) => Number(a.id)),
		[...before, commit(50, 0n), ...after].map((m) => Number(m.id)),
		'one answer per request, in request order',
	);
	t.match(
		answers.find((a) => a.type === MsgType.COMMIT_DONE),
		{ error: 0 },
		'commit succeeded',
	);
	t.ok(answers.every((a) => a.type !== MsgType.MAP_REPLY || (a.flags & MapFlag.ERROR) === 0), 'no map failed');
	t.equal(await onDisk(path), 0n, 'nothing committed: no reply was covered');
	t.same((await plugin.check(path)).corruptions, []);
	await image.close();
	t.equal(await onDisk(path), 40n, 'all 40 after a clean close');
});

t.test('a COMMIT commits the allocations of the replies up to coveredSeq', async (t) => {
	const path = await dirtyImage(t);
	const image = await plugin.open(path);
	const seen: bigint[] = [];
	// The kernel had given out 1000 replies before this daemon: ours are 1001...
	const ctl = new ScriptedControl(
		[range(20, (i) => write(i, i, true)), [commit(100, 1010n)], range(10, (i) => write(200 + i, 30 + i, true)), [commit(101, 1025n)], [commit(102, 1030n)]],
		1000n,
		async () => {
			seen.push(await onDisk(path));
		},
	);
	const worker = new Worker(ctl as unknown as ControlDevice, image, pino({ level: 'silent' }));
	await worker.run();
	seen.push(await onDisk(path));
	// Before batch 0, 1, 2, 3, 4, and at the end.
	t.same(seen, [0n, 0n, 10n, 10n, 25n, 30n], 'each commit adds exactly the covered replies (1001-1010, then to 1025, then 1030)');
	await image.close();
	t.equal(await onDisk(path), 30n);
});

t.test('allocations of a daemon before this one count as replies up to FEATURES.replySeq', async (t) => {
	const path = await dirtyImage(t);
	const first = await plugin.open(path);
	for (let b = 0n; b < 5n; b++) await first.map({ block: b, write: true, wholeBlock: true, roFault: false });
	// That daemon dies uncommitted; this one resumes, and the kernel says
	// its replies (with those five among them) went up to 500.
	const image = await plugin.open(path, { resume: true });
	const seen: bigint[] = [];
	const ctl = new ScriptedControl([[commit(1, 499n)], [commit(2, 500n)]], 500n, async () => {
		seen.push(await onDisk(path));
	});
	await new Worker(ctl as unknown as ControlDevice, image, pino({ level: 'silent' })).run();
	seen.push(await onDisk(path));
	t.same(seen, [0n, 0n, 5n], 'not covered by 499, covered by 500');
	await image.close();
});

t.test('runs: offered when the kernel has MAP_RUN, cut where the same batch allocates', async (t) => {
	const path = await dirtyImage(t);
	const read = (id: number, block: number): KernelMessage => ({ type: MsgType.MAP, flags: 0, id: BigInt(id), block: BigInt(block) });
	const runs = async (maxRun: number, batch: KernelMessage[]) => {
		const image = await plugin.open(path);
		const ctl = new ScriptedControl([batch], 0n, async () => {}, maxRun);
		await new Worker(ctl as unknown as ControlDevice, image, pino({ level: 'silent' })).run();
		await image.close();
		return ctl.written.flat().map((a) => (a.type === MsgType.MAP_REPLY ? a.run : -1));
	};
	t.same(await runs(0, [read(1, 0)]), [0], 'no MAP_RUN: one block per answer');
	t.same(await runs(8, [read(1, 0)]), [8], 'MAP_RUN: a zero run of maxRun blocks');
	// The read's run is worked out before the write sets block 3's bit; the
	// batch must still not say "zeros" for block 3 while handing it out.
	t.same(await runs(8, [read(1, 10), write(2, 13, true)]), [3, 0], 'the run stops before the block allocated beside it');
	t.same(await runs(8, [read(1, 10)]), [3], 'and later runs stop there too (the block is allocated)');
	// A sequential read: the kernel stops each run at the next asked block, so only the last one is worked out.
	t.same(await runs(8, [read(1, 20), read(2, 21), read(3, 22)]), [0, 0, 8], 'neighbours asked together: only the last gets a run');
});
