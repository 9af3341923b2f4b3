/**
 * cowd's Worker over a real dscow image. The control device itself only
 * exists with the kernel target (test/vm covers it); here a stand-in hands
 * the worker batches the way the kernel would and keeps its answers, to
 * check what the worker promises: maps may be answered concurrently, a
 * COMMIT is a barrier in its batch, and a COMMIT makes durable exactly the
 * allocations of the replies its coveredSeq covers (the kernel numbers the
 * replies it accepts, starting after FEATURES.replySeq). With Feature.COW:
 * COW replies as the header lays them out, ALLOCATED recorded and
 * acknowledged, and kernel allocations committed by coveredAlloc.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import t from 'tap';
import type { ControlDevice } from '../../src/abi/control.js';
import { Feature, MapFlag, MsgType, ReqFlag } from '../../src/abi/constants.js';
import { decodeBatch, encodeBatch, encodeMessage } from '../../src/abi/codec.js';
import { type DaemonMessage, type DmuMessage, type KernelMessage, type MapReplyMsg, mapReply } from '../../src/abi/messages.js';
import type { DeviceCapacity } from '../../src/cowd/capacity.js';
import { toReply, trimRuns } from '../../src/cowd/reply.js';
import { Worker } from '../../src/cowd/worker.js';
import { plugin } from '../../src/plugins/dscow/index.js';
import type { Image, MapDecision, MapRequest } from '../../src/plugins/types.js';

/** Replays batches (after an optional check before each), collects answers, ends like a removed target. */
class ScriptedControl {
	readonly written: DaemonMessage[][] = [];
	readonly features: { replySeq: bigint; allocSeq: bigint; features: bigint; maxRun: number };
	#next = 0;
	constructor(
		private readonly batches: KernelMessage[][],
		replySeq = 0n,
		private readonly before: (batch: number) => Promise<void> = async () => {},
		maxRun = 0,
		/** More feature bits (Feature.COW). */
		more = 0n,
		allocSeq = 0n,
	) {
		this.features = { replySeq, allocSeq, features: (maxRun ? Feature.MAP_RUN : 0n) | more, maxRun };
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

t.test('allocations before this worker also wait for coveredAlloc to reach FEATURES.allocSeq', async (t) => {
	const path = await dirtyImage(t);
	const first = await plugin.open(path);
	for (let b = 0n; b < 5n; b++) await first.map({ block: b, write: true, wholeBlock: true, roFault: false });
	// The dead daemon's blocks may include kernel allocations up to 70 whose
	// copies a COMMIT started earlier (a re-sent one) does not cover.
	const image = await plugin.open(path, { resume: true });
	const seen: bigint[] = [];
	const c = (id: number, coveredSeq: bigint, coveredAlloc: bigint): KernelMessage => ({
		type: MsgType.COMMIT,
		flags: 0,
		id: BigInt(id),
		coveredSeq,
		coveredAlloc,
	});
	const ctl = new ScriptedControl([[c(1, 500n, 69n)], [c(2, 500n, 70n)]], 500n, async () => void seen.push(await onDisk(path)), 0, Feature.COW, 70n);
	await new Worker(ctl as unknown as ControlDevice, image, pino({ level: 'silent' })).run();
	seen.push(await onDisk(path));
	t.same(seen, [0n, 0n, 5n], 'not covered by allocation 69, covered by 70');
	await image.close();
});

t.test('a write the kernel faults back is not offered COW', async (t) => {
	const { image } = await cowImage(t);
	const asked: MapRequest[] = [];
	const map = image.map.bind(image);
	image.map = async (req: MapRequest) => {
		asked.push({ ...req });
		return map(req);
	};
	const w = (id: number, block: number, flags: number): KernelMessage => ({ type: MsgType.MAP, flags, id: BigInt(id), block: BigInt(block) });
	const ctl = new ScriptedControl([[w(1, 1, ReqFlag.WRITE), w(2, 3, ReqFlag.WRITE | ReqFlag.RO_FAULT)]], 0n, async () => {}, 0, Feature.COW);
	await new Worker(ctl as unknown as ControlDevice, image, pino({ level: 'silent' })).run();
	t.same(
		asked.map((r) => r.cow === true),
		[true, false],
	);
	const replies = ctl.written.flat() as MapReplyMsg[];
	t.equal(replies[0]!.flags, MapFlag.COW, 'a first write is answered COW');
	t.equal(replies[1]!.flags & MapFlag.COW, 0, 'a faulted write is allocated by the daemon');
	t.ok(replies[1]!.flags & MapFlag.WRITABLE);
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

/* Copy on write in the kernel (Feature.COW). */

const BLOCK_SECTORS = 128n; // 64 KiB blocks
/** Where dscow keeps block N in these images (first block at 64 KiB), and where the base has it. */
const imageSector = (block: number) => (65536n + BigInt(block) * 65536n) / 512n;
const baseSector = (block: number) => BigInt(block) * BLOCK_SECTORS;
const readReq = (id: number, block: number): KernelMessage => ({ type: MsgType.MAP, flags: 0, id: BigInt(id), block: BigInt(block) });
const allocated = (id: number, block: number, allocSeq: bigint, sector = imageSector(block), dev = 0, count = 1): KernelMessage => ({
	type: MsgType.ALLOCATED,
	flags: 0,
	id: BigInt(id),
	block: BigInt(block),
	sector,
	allocSeq,
	dev,
	count,
});
const commitAlloc = (id: number, coveredSeq: bigint, coveredAlloc: bigint): KernelMessage => ({
	type: MsgType.COMMIT,
	flags: 0,
	id: BigInt(id),
	coveredSeq,
	coveredAlloc,
});
const byId = (answers: DaemonMessage[], id: number) => answers.find((a) => a.id === BigInt(id));
const silent = pino({ level: 'silent' });

/** A dscow image over a 4 MiB base (64 blocks), closed at the end of the test. */
async function cowImage(t: { teardown(fn: () => unknown): void }, opts: { readOnly?: boolean } = {}) {
	const dir = await mkdtemp(join(tmpdir(), 'cowd-worker-cow-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const path = join(dir, 'disk.dscow');
	const base = join(dir, 'base.img');
	await writeFile(base, Buffer.alloc(4 << 20, 0x5a));
	await plugin.create(path, { base });
	const image = await plugin.open(path, opts);
	t.teardown(() => image.close());
	return { path, image };
}

/** Serve `batches` with a worker; the answers flat, in order. */
async function serve(
	image: Image,
	batches: KernelMessage[][],
	o: { features?: bigint; maxRun?: number; before?: (i: number) => Promise<void>; capacity?: DeviceCapacity } = {},
) {
	const ctl = new ScriptedControl(batches, 0n, o.before, o.maxRun ?? 0, o.features ?? 0n);
	const worker = new Worker(ctl as unknown as ControlDevice, image, silent, o.capacity);
	await worker.run();
	return { answers: ctl.written.flat(), worker };
}

/** The image as a plugin without allocated() (unless `record`), or one whose map() says something else. */
function wrapped(image: Image, map: Image['map'] = (r) => image.map(r), record = false): Image & { asked: MapRequest[] } {
	const asked: MapRequest[] = [];
	return {
		...(record ? { allocated: (b: bigint, dev: number, sector: bigint, count: number) => image.allocated!(b, dev, sector, count) } : {}),
		format: image.format,
		virtualSize: image.virtualSize,
		blockSize: image.blockSize,
		devices: image.devices,
		capabilities: image.capabilities,
		map: (r) => {
			asked.push(r);
			return map(r);
		},
		commit: (c) => image.commit(c),
		close: () => image.close(),
		asked,
	};
}

t.test('COW answers only when the kernel has Feature.COW and the image can take them', async (t) => {
	const batch = () => [readReq(1, 2), write(2, 5, false), write(3, 6, true)];
	const flagsOf = (answers: DaemonMessage[]) => answers.map((a) => a.flags);

	const plain = await serve((await cowImage(t)).image, [batch()]);
	t.same(flagsOf(plain.answers), [MapFlag.DURABLE, MapFlag.WRITABLE | MapFlag.COPY_FIRST, MapFlag.WRITABLE], 'no Feature.COW: base read, copy-first, allocation');

	const cow = await serve((await cowImage(t)).image, [batch()], { features: Feature.COW });
	t.same(flagsOf(cow.answers), [MapFlag.COW, MapFlag.COW, MapFlag.COW], 'Feature.COW: COW alone for the read and both writes');
	for (const [i, block] of [2, 5, 6].entries()) {
		t.match(cow.answers[i], { block: BigInt(block), dev: 0, sector: imageSector(block), srcDev: 1, srcSector: baseSector(block) }, `block ${block}: destination in the image, source in the base`);
	}

	const ro = await serve((await cowImage(t, { readOnly: true })).image, [[readReq(1, 2)]], { features: Feature.COW });
	t.same(flagsOf(ro.answers), [MapFlag.DURABLE], 'read-only image: no COW');

	const noRecord = wrapped((await cowImage(t)).image);
	const nr = await serve(noRecord, [batch()], { features: Feature.COW });
	t.same(flagsOf(nr.answers), [MapFlag.DURABLE, MapFlag.WRITABLE | MapFlag.COPY_FIRST, MapFlag.WRITABLE], 'image without allocated(): no COW');
	t.ok(noRecord.asked.every((r) => r.cow !== true), 'and the plugin was not offered it');
});

t.test('a COW reply on the wire: flag, destination, source, run', async (t) => {
	const { image } = await cowImage(t);
	const { answers } = await serve(image, [[readReq(7, 2)]], { features: Feature.COW, maxRun: 8 });
	t.equal(answers.length, 1);
	const b = encodeMessage(answers[0]!);
	// struct dmu_msg: type, flags, id; struct dmu_map_reply from byte 16.
	t.equal(b.readUInt32LE(0), 0x82, 'DMU_MSG_MAP_REPLY');
	t.equal(b.readUInt32LE(4), 1 << 6, 'flags: DMU_MAP_COW alone');
	t.equal(b.readBigUInt64LE(8), 7n, 'id of the request');
	t.equal(b.readBigUInt64LE(16), 2n, 'block');
	t.equal(b.readBigUInt64LE(24), imageSector(2), 'sector: the COW destination in the image');
	t.equal(b.readBigUInt64LE(32), baseSector(2), 'src_sector: where reads go until the first write');
	t.equal(b.readUInt32LE(40), 0, 'dev: the image');
	t.equal(b.readUInt32LE(44), 1, 'src_dev: the base');
	t.equal(b.readInt32LE(48), 0, 'error');
	t.equal(b.readUInt32LE(52), 8, 'run: a COW answer may cover a run (not cut to one block)');
	t.ok(b.subarray(56).equals(Buffer.alloc(8)), 'reserved bytes zero');
});

t.test('toReply and trimRuns with COW answers', async (t) => {
	const r = toReply(3n, 10n, { kind: 'map', dev: 1, sector: 80n, writable: false, durable: true, cow: { dev: 0, sector: 1080n }, run: 4 });
	t.match(r, { type: MsgType.MAP_REPLY, flags: MapFlag.COW, block: 10n, dev: 0, sector: 1080n, srcDev: 1, srcSector: 80n, run: 4 });
	t.same(decodeBatch(encodeBatch([r])), [r], 'survives the codec');
	const cowAt = (block: bigint, src: { dev: number; sector: bigint }, run = 0) =>
		mapReply({ id: block, block, flags: MapFlag.COW, dev: 0, sector: 1000n + block * 8n, srcDev: src.dev, srcSector: src.sector, run });
	const runOf = (out: DaemonMessage[]) => (out[0] as { run: number }).run;
	const run = cowAt(10n, { dev: 1, sector: 80n }, 4);
	t.equal(runOf(trimRuns([run, cowAt(12n, { dev: 1, sector: 96n })], 8n)), 4, 'a neighbour with the same destination and source steps: run kept');
	t.equal(runOf(trimRuns([run, cowAt(12n, { dev: 1, sector: 500n })], 8n)), 2, 'another source sector: cut before it');
	t.equal(runOf(trimRuns([run, cowAt(12n, { dev: 2, sector: 96n })], 8n)), 2, 'another source device: cut before it');
	const one = (block: bigint) => ({ block, count: 1 });
	t.equal(runOf(trimRuns([run], 8n, [one(13n)])), 3, 'cut before a block the batch reports allocated by the kernel');
	t.equal(runOf(trimRuns([run], 8n, [one(11n)])), 0, 'a run of one is no run');
	t.equal(runOf(trimRuns([run], 8n, [one(10n), one(14n), one(9n)])), 4, 'allocations outside the run (or of its own block) do not cut it');
	t.equal(runOf(trimRuns([run], 8n, [{ block: 8n, count: 4 }])), 0, 'a range from before the run that reaches into it cuts at the run\'s second block');
	t.equal(runOf(trimRuns([run], 8n, [{ block: 12n, count: 100 }])), 2, 'a range inside and past the run cuts at its start');
	t.equal(runOf(trimRuns([run], 8n, [{ block: 6n, count: 5 }])), 4, 'a range that ends at the run\'s own block does not cut it');
});

t.test('ALLOCATED: recorded by the image, acknowledged with its id, a barrier in its batch', async (t) => {
	const { image } = await cowImage(t);
	const calls: Array<[bigint, number, bigint, number]> = [];
	const record = image.allocated!.bind(image);
	image.allocated = async (block, dev, sector, count) => {
		calls.push([block, dev, sector, count]);
		// Slow to record: a read let through before it finished would see the base.
		await new Promise((r) => setTimeout(r, 20));
		return record(block, dev, sector, count);
	};
	// The read of block 3 comes after the kernel allocated it: it must see the allocation.
	const { answers, worker } = await serve(image, [[allocated(10, 3, 1n), readReq(11, 3)], [allocated(12, 3, 1n)]], { features: Feature.COW });
	t.same(calls, [[3n, 0, imageSector(3), 1], [3n, 0, imageSector(3), 1]], 'image.allocated(block, dev, sector, count), each time');
	t.match(byId(answers, 10), { type: MsgType.ALLOCATED_ACK, flags: 0 }, 'acknowledged with the id of the ALLOCATED');
	t.match(byId(answers, 11), { type: MsgType.MAP_REPLY, flags: MapFlag.WRITABLE, dev: 0, sector: imageSector(3) }, 'the later read sees the block allocated');
	t.match(byId(answers, 12), { type: MsgType.ALLOCATED_ACK }, 'a report of a block already recorded (re-sent to a new daemon) is acknowledged too');
	t.same(answers.map((a) => a.id), [10n, 11n, 12n], 'answers in order');
	t.equal(worker.stats.errors, 0, 'no error');
	t.equal(worker.stats.allocations, 2);
});

t.test('neighbouring ALLOCATED reports are recorded together, still before what follows them', async (t) => {
	const { image } = await cowImage(t);
	const record = image.allocated!.bind(image);
	let inFlight = 0;
	let most = 0;
	image.allocated = async (block, dev, sector, count) => {
		most = Math.max(most, ++inFlight);
		await new Promise((r) => setTimeout(r, 10));
		await record(block, dev, sector, count);
		inFlight--;
	};
	const reports = Array.from({ length: 32 }, (_, i) => allocated(100 + i, i, BigInt(i + 1)));
	const { answers, worker } = await serve(image, [[...reports, readReq(200, 31)]], { features: Feature.COW });
	t.equal(most, 32, 'all 32 recorded at once');
	t.equal(answers.filter((a) => a.type === MsgType.ALLOCATED_ACK).length, 32, 'each acknowledged');
	t.match(byId(answers, 200), { type: MsgType.MAP_REPLY, flags: MapFlag.WRITABLE, sector: imageSector(31) }, 'the read after them sees the last one');
	t.equal(worker.stats.allocations, 32);
});

t.test('a COW run worked out before an ALLOCATED of the same batch stops before its block', async (t) => {
	const { image } = await cowImage(t);
	const { answers } = await serve(image, [[readReq(1, 0), allocated(2, 3, 1n)]], { features: Feature.COW, maxRun: 8 });
	t.match(byId(answers, 1), { flags: MapFlag.COW, run: 3 }, 'blocks 0-2 only: block 3 now lives in the image');
	const later = await serve(image, [[readReq(3, 0)]], { features: Feature.COW, maxRun: 8 });
	t.match(later.answers, [{ flags: MapFlag.COW, run: 3 }], 'as a later answer does by itself');
});

t.test('a COMMIT covers kernel allocations up to coveredAlloc, whatever coveredSeq says', async (t) => {
	const { path, image } = await cowImage(t);
	const seen: bigint[] = [];
	const batches = [
		[allocated(1, 0, 1n), allocated(2, 1, 2n), allocated(3, 2, 3n)],
		[commitAlloc(4, 1000n, 0n)],
		[commitAlloc(5, 0n, 2n)],
		[allocated(6, 3, 4n), commitAlloc(7, 0n, 3n)],
		[allocated(8, 4, 5n), commitAlloc(9, 0n, 5n)],
	];
	const { answers } = await serve(image, batches, { features: Feature.COW, before: async () => void seen.push(await onDisk(path)) });
	seen.push(await onDisk(path));
	// Before batch 0, 1, 2, 3, 4, and at the end.
	t.same(seen, [0n, 0n, 0n, 2n, 3n, 5n], 'by coveredAlloc: none for 0 (not for coveredSeq 1000), 2, 3 (not the 4th), then all 5 (same batch)');
	t.ok(answers.filter((a) => a.type === MsgType.COMMIT_DONE).every((a) => (a as { error: number }).error === 0), 'every commit succeeded');
	t.equal(answers.filter((a) => a.type === MsgType.ALLOCATED_ACK).length, 5, 'every allocation acknowledged');
});

t.test('an allocation the image cannot record: not acknowledged, and a flush covering it fails', async (t) => {
	const { path, image } = await cowImage(t);
	const wrong = allocated(1, 3, 7n, imageSector(4));
	const { answers, worker } = await serve(image, [[allocated(5, 2, 6n), wrong], [commitAlloc(2, 0n, 6n)], [commitAlloc(3, 0n, 7n)]], {
		features: Feature.COW,
	});
	t.notOk(byId(answers, 1), 'the refused allocation is not acknowledged');
	t.match(byId(answers, 5), { type: MsgType.ALLOCATED_ACK }, 'the good one is');
	t.match(byId(answers, 2), { type: MsgType.COMMIT_DONE, error: 0 }, 'a flush before it succeeds');
	t.match(byId(answers, 3), { type: MsgType.COMMIT_DONE, error: 5 }, 'a flush covering it fails (EIO)');
	t.equal(await onDisk(path), 1n, 'block 2 committed, block 3 never recorded');
	t.ok(worker.stats.errors >= 2, 'errors counted');

	const noRecord = wrapped((await cowImage(t)).image);
	const nr = await serve(noRecord, [[allocated(1, 2, 1n), commitAlloc(2, 0n, 1n)]], { features: Feature.COW });
	t.notOk(byId(nr.answers, 1), 'an image without allocated(): not acknowledged');
	t.match(byId(nr.answers, 2), { error: 5 }, 'and the flush covering it fails');
});

t.test('a COW answer the kernel was not offered, or mixed with other flags, fails the I/O', async (t) => {
	const { image } = await cowImage(t);
	const cowAnswer = (extra: object) => async (r: MapRequest): Promise<MapDecision> => ({
		kind: 'map',
		dev: 1,
		sector: r.block * BLOCK_SECTORS,
		writable: false,
		cow: { dev: 0, sector: imageSector(Number(r.block)) },
		...extra,
	});
	const notOffered = await serve(wrapped(image, cowAnswer({})), [[readReq(1, 2)]]);
	t.match(notOffered.answers, [{ flags: MapFlag.ERROR, error: 5 }], 'no Feature.COW: EIO');
	const writable = await serve(wrapped(image, cowAnswer({ writable: true })), [[readReq(1, 2)]], { features: Feature.COW });
	t.match(writable.answers, [{ flags: MapFlag.ERROR, error: 5 }], 'COW and writable: EIO');
	const copy = await serve(wrapped(image, cowAnswer({ copyFrom: { dev: 1, sector: 0n } })), [[readReq(1, 2)]], { features: Feature.COW });
	t.match(copy.answers, [{ flags: MapFlag.ERROR, error: 5 }], 'COW and copy-first: EIO');
	const good = await serve(wrapped(image, cowAnswer({}), true), [[readReq(1, 2)]], { features: Feature.COW });
	t.match(good.answers, [{ flags: MapFlag.COW }], 'and offered, alone: passed on');
});

t.test('device capacity: the read location and the destination, for the whole run', async (t) => {
	const { image } = await cowImage(t);
	const ensured: Array<[number, bigint]> = [];
	const capacity = { ensure: async (dev: number, end: bigint) => void ensured.push([dev, end]) } as unknown as DeviceCapacity;
	await serve(image, [[readReq(1, 2)]], { features: Feature.COW, maxRun: 8, capacity });
	t.same(
		ensured,
		[
			[1, baseSector(2) + 8n * BLOCK_SECTORS],
			[0, imageSector(2) + 8n * BLOCK_SECTORS],
		],
		'base up to the end of the run, image up to the end of the run',
	);
});

/**
 * The kernel's queue as stop() meets it: whole messages in order, at most
 * `maxBatch` per read, a read waits for one, a GET_FEATURES is answered at
 * the tail of what is queued, close() ends a waiting read with nothing.
 */
class QueuedControl {
	readonly written: DaemonMessage[] = [];
	readonly features = { replySeq: 0n, allocSeq: 0n, features: Feature.COW, maxRun: 0 };
	readonly queue: KernelMessage[] = [];
	closed = false;
	#wake: (() => void) | undefined;
	constructor(
		private readonly maxBatch: number,
		/** Queued right after the answer to a GET_FEATURES: I/O after the stop. */
		private readonly afterFeatures: KernelMessage[] = [],
	) {}
	push(...m: KernelMessage[]) {
		this.queue.push(...m);
		this.#wake?.();
	}
	async readBatch(): Promise<DmuMessage[]> {
		while (this.queue.length === 0 && !this.closed) await new Promise<void>((r) => (this.#wake = r));
		if (this.closed) return [];
		return this.queue.splice(0, this.maxBatch);
	}
	async writeBatch(msgs: readonly DaemonMessage[]): Promise<void> {
		for (const m of msgs) {
			if (m.type !== MsgType.GET_FEATURES) this.written.push(m);
			else this.push({ ...this.features, type: MsgType.FEATURES, flags: 0, id: m.id, nrBlocks: 64n, blockSectors: 128, nrDevs: 2, maxBatch: this.maxBatch }, ...this.afterFeatures);
		}
	}
	async close(): Promise<void> {
		this.closed = true;
		this.#wake?.();
	}
}

t.test('stop() serves every ALLOCATED the kernel queued before it, and nothing after', async (t) => {
	const { path, image } = await cowImage(t);
	const record = image.allocated!.bind(image);
	let started!: () => void;
	const busy = new Promise<void>((r) => (started = r));
	image.allocated = async (block, dev, sector, count) => {
		started();
		await new Promise((r) => setTimeout(r, 20)); // stop() arrives while the first batch is served
		return record(block, dev, sector, count);
	};
	const late = allocated(20, 9, 4n);
	const ctl = new QueuedControl(2, [late]);
	ctl.push(allocated(10, 3, 1n), allocated(11, 4, 2n), allocated(12, 5, 3n));
	const worker = new Worker(ctl as unknown as ControlDevice, image, silent);
	const end = worker.run();
	await busy;
	await Promise.all([worker.stop(), worker.stop()]);
	t.equal(await end, 'stopped', 'the worker ends as stopped');
	t.ok(ctl.closed, 'the control device is closed');
	t.same(
		ctl.written.map((m) => [m.type, m.id]),
		[10n, 11n, 12n].map((id) => [MsgType.ALLOCATED_ACK, id]),
		'the three reports queued before the stop are acknowledged, the one after is not',
	);
	t.same(ctl.queue, [late], 'the later report is left for the next daemon');
	await image.close();
	t.equal((await plugin.info(path)).allocatedBlocks, 3n, 'and the image records the three blocks');
});

t.test('stop() before run() still serves what the kernel queued, then run() ends as stopped', async (t) => {
	const { image } = await cowImage(t);
	const ctl = new QueuedControl(2);
	ctl.push(allocated(10, 3, 1n));
	const worker = new Worker(ctl as unknown as ControlDevice, image, silent);
	await worker.stop();
	t.ok(ctl.closed, 'closed');
	t.same(
		ctl.written.map((m) => [m.type, m.id]),
		[[MsgType.ALLOCATED_ACK, 10n]],
		'the queued report is acknowledged',
	);
	t.equal(await worker.run(), 'stopped');
});

t.test('a report of a range: every block recorded, one acknowledgement, each block committed by its own number', async (t) => {
	const { path, image } = await cowImage(t);
	const calls: number[] = [];
	const record = image.allocated!.bind(image);
	image.allocated = (block, dev, sector, count) => {
		calls.push(count);
		return record(block, dev, sector, count);
	};
	// Blocks 10..13, allocations 5..8; the commit covers up to 6 (blocks 10 and 11).
	const { answers, worker } = await serve(image, [[allocated(1, 10, 5n, imageSector(10), 0, 4)], [commitAlloc(2, 0n, 6n)]], { features: Feature.COW });
	t.same(
		answers.map((a) => [a.type, a.id]),
		[
			[MsgType.ALLOCATED_ACK, 1n],
			[MsgType.COMMIT_DONE, 2n],
		],
		'one ack for the report, then the commit',
	);
	t.equal(worker.stats.allocations, 4, 'four blocks counted');
	t.same(calls, [4], 'the image is asked once, for the whole range');
	t.equal(await onDisk(path), 2n, 'the commit made blocks 10 and 11 durable, not 12 and 13');
	const read = await image.map({ block: 13n, write: false, wholeBlock: false, roFault: false });
	t.match(read, { kind: 'map', dev: 0, sector: imageSector(13) }, 'the last block of the range is the image\'s');
	t.equal(byId(answers, 2)?.type === MsgType.COMMIT_DONE && (byId(answers, 2) as { error: number }).error, 0);
});

t.test('a range with a block in the wrong place: not acknowledged, and flushes covering it fail', async (t) => {
	const { image } = await cowImage(t);
	// Block 21's sector would be imageSector(21); the report says one block further.
	const { answers } = await serve(image, [[allocated(1, 20, 3n, imageSector(21), 0, 2)], [commitAlloc(2, 0n, 4n)]], { features: Feature.COW });
	t.notOk(byId(answers, 1), 'not acknowledged');
	t.match(byId(answers, 2), { type: MsgType.COMMIT_DONE, error: 5 }, 'the flush covering it fails');
});

t.test('runs stop before every block of a range reported in the same batch', async (t) => {
	const { image } = await cowImage(t);
	const { answers } = await serve(image, [[readReq(1, 30), allocated(2, 33, 1n, imageSector(33), 0, 3)]], { features: Feature.COW, maxRun: 16 });
	t.match(byId(answers, 1), { run: 3 }, 'the read of block 30 runs up to block 33, where the range starts');
});
