/**
 * The per-disk worker: read a batch from the control device, ask the
 * plugin about every request in it at once, write all answers back in one
 * batch. Nothing here blocks the event loop: the control read sits in a
 * threadpool thread, plugin calls are async.
 */
import type { Logger } from 'pino';
import { ControlRejectError, type ControlDevice } from '../abi/control.js';
import { Feature, MsgType, ReqFlag } from '../abi/constants.js';
import {
	type AllocatedMsg,
	allocatedAck,
	type CommitMsg,
	commitDone,
	type DaemonMessage,
	type DmuMessage,
	getFeatures,
	mapReply,
} from '../abi/messages.js';
import { MapFlag } from '../abi/constants.js';
import { isDmuError } from '../errors.js';
import type { Image, MapDecision, MapRequest } from '../plugins/types.js';
import type { DeviceCapacity } from './capacity.js';
import { toReply, trimRuns } from './reply.js';

const EIO = 5;

/**
 * The disk's length in sectors: exactly the image's size, so the last block
 * may be short (the kernel's dmu_block_len() gives each block its length).
 */
export const diskSectors = (image: Pick<Image, 'virtualSize'>): bigint => (image.virtualSize + 511n) / 512n;

export interface WorkerStats {
	batches: number;
	maps: number;
	commits: number;
	/** ALLOCATED messages: blocks the kernel allocated on a COW answer's first write. */
	allocations: number;
	errors: number;
}

export type WorkerEnd = 'stopped' | 'target-gone';

/**
 * Blocks one answer covers unless cowd --max-run says otherwise: 16 MiB at
 * 64 KiB blocks. Each block of a run costs the kernel a mapping (80 bytes
 * and a tree insert) whether it is read or not, and a run never evicts, so
 * the kernel's limit (4096) would fill the default table of 65536 in 16
 * answers and spend most of its time mapping what a short read never uses.
 */
export const DEFAULT_MAX_RUN = 256;

/**
 * Id of the GET_FEATURES stop() writes. The kernel queues its answer
 * behind everything it had queued already, so once that answer is read,
 * every ALLOCATED report made before the stop has been served.
 */
const DRAIN_ID = (1n << 64n) - 2n;
/** How long stop() serves what was queued before closing anyway. */
const DRAIN_TIMEOUT_MS = 10_000;

/** A reply not (yet) accepted by the kernel: no flush covers its allocation. */
const NEVER = 1n << 64n;

/**
 * A mapping whose metadata the image has still to commit. A COW answer
 * allocates nothing: the kernel's ALLOCATED does, numbered apart.
 */
const isUncommitted = (r: DaemonMessage) =>
	r.type === MsgType.MAP_REPLY && (r.flags & (MapFlag.DURABLE | MapFlag.ERROR | MapFlag.ZERO | MapFlag.COW)) === 0;

export class Worker {
	readonly stats: WorkerStats = { batches: 0, maps: 0, commits: 0, allocations: 0, errors: 0 };
	#stopping = false;
	/** The answer to stop()'s GET_FEATURES has been read: the loop ends after its batch. */
	#drained = false;
	#running: Promise<WorkerEnd> | undefined;
	#loopDone = false;
	#stopped: Promise<void> | undefined;
	#busy: Promise<void> | undefined;
	/**
	 * The kernel numbers the MAP_REPLYs it accepts (Feature.COMMIT_SEQ);
	 * #seq is the number of the last one, starting from where the kernel
	 * was when this worker opened the device.
	 */
	readonly #firstSeq: bigint;
	/** FEATURES.allocSeq: the last allocation the kernel made before this worker (Feature.COW). */
	readonly #firstAlloc: bigint;
	#seq: bigint;
	/** Blocks given as not yet durable, by the number of the reply that first did. */
	#uncommitted = new Map<bigint, bigint>();
	/**
	 * Blocks the kernel allocated itself (Feature.COW), not yet committed,
	 * by the allocation's number: a COMMIT covers them by coveredAlloc.
	 * Keyed by plain numbers (every first write lands here; a block index
	 * is far below 2^53).
	 */
	#kernelAllocated = new Map<number, bigint>();
	/**
	 * The lowest number of an allocation the image failed to record (never
	 * acknowledged): no flush covering it may succeed, its metadata is lost.
	 */
	#unrecorded: bigint | undefined;
	/** Most blocks one answer may cover: 1 unless the kernel has Feature.MAP_RUN. */
	readonly #maxRun: number;
	/** Plugins may answer copy-on-write (MapRequest.cow). */
	readonly #cow: boolean;

	constructor(
		readonly ctl: ControlDevice,
		readonly image: Image,
		readonly log: Logger,
		/** Grows loop devices under mappings past their end; none in tests without a kernel. */
		readonly capacity?: DeviceCapacity,
		/** Cap on blocks per answer (cowd --max-run); the kernel's own limit applies anyway. */
		maxRunCap?: number,
	) {
		this.#firstSeq = ctl.features.replySeq;
		this.#firstAlloc = ctl.features.allocSeq ?? 0n;
		this.#seq = this.#firstSeq;
		const f = ctl.features;
		const kernelMax = f.features !== undefined && (f.features & Feature.MAP_RUN) !== 0n ? Math.max(1, f.maxRun) : 1;
		this.#maxRun = Math.max(1, Math.min(kernelMax, maxRunCap ?? DEFAULT_MAX_RUN));
		// A COW answer promises the kernel may allocate: only into an image
		// that is writable and can record what the kernel did.
		const kernelCow = f.features !== undefined && (f.features & Feature.COW) !== 0n;
		this.#cow = kernelCow && image.capabilities.write && typeof image.allocated === 'function';
	}

	run(): Promise<WorkerEnd> {
		this.#running ??= this.#loop().finally(() => {
			this.#loopDone = true;
		});
		return this.#running;
	}

	async #loop(): Promise<WorkerEnd> {
		for (;;) {
			if (this.#drained) return 'stopped';
			const msgs = await this.ctl.readBatch();
			if (msgs.length === 0) return this.#stopping ? 'stopped' : 'target-gone';
			if (this.#stopping && msgs.some((m) => m.type === MsgType.FEATURES && m.id === DRAIN_ID)) this.#drained = true;
			this.#busy = this.#serve(msgs);
			await this.#busy;
			this.#busy = undefined;
		}
	}

	/**
	 * Serve what the kernel queued before now, then close the control
	 * device. An ALLOCATED report still queued names a block the kernel
	 * has written and the image has not recorded: if the daemon closed
	 * without it and the device were then removed, that data would be
	 * lost. Whatever comes after the drain (a device still in use) waits
	 * in the kernel for the next daemon. Safe to call more than once.
	 */
	stop(): Promise<void> {
		this.#stopping = true;
		this.#stopped ??= this.#drainAndClose();
		return this.#stopped;
	}

	async #drainAndClose(): Promise<void> {
		if (!this.#loopDone) {
			// run() starts the loop if stop() came first (a SIGTERM right
			// after a takeover): the kernel's queue needs serving all the same.
			const ended = this.run().then(
				() => false,
				() => false,
			);
			let timer: NodeJS.Timeout | undefined;
			try {
				await this.ctl.writeBatch([getFeatures(DRAIN_ID)]);
				const timedOut = await Promise.race([ended, new Promise<boolean>((r) => (timer = setTimeout(() => r(true), DRAIN_TIMEOUT_MS)))]);
				if (timedOut) this.log.warn('stopping: the kernel\'s queue was not served in time; what is left goes to the next daemon');
			} catch (e) {
				// The target is gone (nothing left to serve) or the device failed.
				this.log.debug({ err: (e as Error).message }, 'stopping: no drain');
			} finally {
				clearTimeout(timer);
			}
		}
		await this.#busy?.catch(() => undefined);
		await this.ctl.close();
	}

	async #serve(msgs: DmuMessage[]): Promise<void> {
		this.stats.batches++;
		// One plugin call at a time unless the image says map() may overlap:
		// not every format serialises its own allocations (two concurrent
		// writes to new blocks could be given the same place in the file).
		// Overlapping or not, a message other than MAP (a commit) is a
		// barrier: it sees exactly the maps before it in the batch. Such an
		// image records neighbouring ALLOCATED reports together too (dscow
		// then writes their live-bitmap words at once, not one write per
		// block: a sequential first write reports every block). Answers go
		// back in one batch.
		let replies: DaemonMessage[] = [];
		// A run stops in the kernel at the next block that has a request in
		// flight: a request whose next block is asked in this batch too gets
		// no run worked out (a sequential read asks for many neighbours).
		const asked = new Set<bigint>();
		if (this.#maxRun > 1) for (const m of msgs) if (m.type === MsgType.MAP) asked.add(m.block);
		const concurrent = this.image.capabilities.concurrentMap === true;
		for (let i = 0; i < msgs.length; ) {
			let end = i + 1;
			const type = msgs[i]!.type;
			if (concurrent && (type === MsgType.MAP || type === MsgType.ALLOCATED)) {
				while (end < msgs.length && msgs[end]!.type === type) end++;
			}
			const group = msgs.slice(i, end);
			const answers =
				type === MsgType.ALLOCATED
					? await this.#recordAllocations(group as AllocatedMsg[])
					: await Promise.all(group.map((m) => this.#handle(m, asked)));
			for (const r of answers) if (r) replies.push(r);
			i = end;
		}
		if (replies.length === 0) return;
		// Only runs need trimming: a batch of reports alone has none.
		if (this.#maxRun > 1 && asked.size > 0) replies = trimRuns(replies, BigInt(this.image.blockSize / 512), allocatedRanges(msgs));
		let refused = new Set<DaemonMessage>();
		try {
			await this.ctl.writeBatch(replies);
		} catch (e) {
			if (!(e instanceof ControlRejectError)) throw e;
			// A refused answer is a plugin or daemon bug: say which, keep serving.
			this.stats.errors += e.rejected.length;
			for (const r of e.rejected) this.log.error({ msg: r.message, errno: r.errno }, 'kernel refused an answer');
			refused = new Set(e.rejected.map((r) => r.message));
		}
		this.#numberReplies(replies, refused);
	}

	/** Give accepted MAP_REPLYs the kernel's numbers; remember the allocations. */
	#numberReplies(replies: readonly DaemonMessage[], refused: ReadonlySet<DaemonMessage>): void {
		for (const r of replies) {
			if (r.type !== MsgType.MAP_REPLY) continue;
			const seq = refused.has(r) ? NEVER : ++this.#seq;
			// The first accepted reply that handed the block out is the one
			// whose copy-first counts; #handle left NEVER until it is numbered.
			if (isUncommitted(r) && (this.#uncommitted.get(r.block) ?? NEVER) === NEVER) this.#uncommitted.set(r.block, seq);
		}
	}

	/**
	 * Is `block`'s data covered by the COMMIT's flush? A block the kernel
	 * allocated is when its allocation number is within coveredAlloc (and
	 * any reply of ours that allocated it too is within coveredSeq); others
	 * when the reply that handed them out is within coveredSeq. A block
	 * this worker never handed out nor heard of was allocated before it,
	 * by the daemon through a reply numbered at most #firstSeq or by the
	 * kernel in an allocation numbered at most #firstAlloc (reported to
	 * and acknowledged by that daemon): it needs both numbers covered.
	 */
	#covers(m: CommitMsg): (block: bigint) => boolean {
		const before = this.#firstSeq <= m.coveredSeq && this.#firstAlloc <= m.coveredAlloc;
		return (block) => {
			const byReply = this.#uncommitted.get(block);
			const byKernel = this.#kernelAllocated.get(Number(block));
			if (byKernel !== undefined) return byKernel <= m.coveredAlloc && (byReply ?? 0n) <= m.coveredSeq;
			return byReply === undefined ? before : byReply <= m.coveredSeq;
		};
	}

	/**
	 * A run the kernel would refuse is a plugin bug: answer for the one
	 * block instead, and log it (a refused answer would fail the I/O).
	 */
	#checkRun(block: bigint, d: MapDecision): MapDecision {
		if (d.kind === 'error' || d.run === undefined || d.run <= 1) return d;
		const bs = BigInt(this.image.blockSize);
		const blocksLeft = (this.image.virtualSize + bs - 1n) / bs - block;
		const oneOnly = (d.kind === 'map' && d.copyFrom !== undefined) || d.temporary === true;
		if (oneOnly || !Number.isInteger(d.run) || d.run > this.#maxRun || BigInt(d.run) > blocksLeft) {
			this.log.warn({ block, run: d.run, maxRun: this.#maxRun }, 'plugin gave a run the kernel cannot take: answering for one block');
			return { ...d, run: undefined };
		}
		return d;
	}

	/**
	 * A COW answer the kernel was not offered, or one that mixes COW with
	 * what the header forbids beside it, is a plugin bug: the caller fails
	 * the I/O (a refused answer would too, with less said about why).
	 */
	#checkCow(req: MapRequest, d: MapDecision): MapDecision {
		if (d.kind !== 'map' || d.cow === undefined) return d;
		if (!req.cow) throw new Error('plugin answered copy-on-write, which this kernel or image was not offered');
		if (d.writable || d.copyFrom !== undefined || d.temporary === true) {
			throw new Error('plugin answered copy-on-write with a writable, copy-first or temporary mapping');
		}
		return d;
	}

	/** Make sure every sector the kernel may touch for `d` exists on its device. */
	async #ensureCapacity(block: bigint, d: MapDecision & { kind: 'map' }): Promise<void> {
		if (!this.capacity) return;
		// As the kernel checks it: a short last block needs only its own sectors.
		const bs = BigInt(this.image.blockSize / 512);
		const left = diskSectors(this.image) - block * bs;
		const span = bs * BigInt(d.run ?? 1);
		const len = left < span ? left : span;
		await this.capacity.ensure(d.dev, d.sector + len);
		if (d.copyFrom) await this.capacity.ensure(d.copyFrom.dev, d.copyFrom.sector + len);
		if (d.cow) await this.capacity.ensure(d.cow.dev, d.cow.sector + len);
	}

	async #handle(m: DmuMessage, asked: ReadonlySet<bigint>): Promise<DaemonMessage | undefined> {
		switch (m.type) {
			case MsgType.MAP: {
				this.stats.maps++;
				const req: MapRequest = {
					block: m.block,
					write: (m.flags & ReqFlag.WRITE) !== 0,
					wholeBlock: (m.flags & ReqFlag.WHOLE_BLOCK) !== 0,
					roFault: (m.flags & ReqFlag.RO_FAULT) !== 0,
					maxRun: asked.has(m.block + 1n) ? 1 : this.#maxRun,
				};
				// A write the kernel could not allocate itself (no memory for
				// the mapping) comes back as a fault: allocate it here.
				if (this.#cow && !req.roFault) req.cow = true;
				let d: MapDecision;
				try {
					d = this.#checkRun(m.block, this.#checkCow(req, await this.image.map(req)));
				} catch (e) {
					this.stats.errors++;
					this.log.error({ block: m.block, write: req.write, err: isDmuError(e) ? e.message : String(e) }, 'map failed: failing the I/O');
					return mapReply({ id: m.id, block: m.block, flags: MapFlag.ERROR, error: EIO });
				}
				this.log.trace({ block: m.block, req, d }, 'map');
				if (d.kind === 'map') {
					try {
						await this.#ensureCapacity(m.block, d);
					} catch (e) {
						this.stats.errors++;
						this.log.error({ block: m.block, err: (e as Error).message }, 'mapping does not fit its device: failing the I/O');
						return mapReply({ id: m.id, block: m.block, flags: MapFlag.ERROR, error: EIO });
					}
				}
				const reply = toReply(m.id, m.block, d);
				// Not covered by any flush until the kernel has numbered the reply.
				if (isUncommitted(reply) && !this.#uncommitted.has(m.block)) this.#uncommitted.set(m.block, NEVER);
				return reply;
			}
			case MsgType.COMMIT:
				return this.#commit(m);
			case MsgType.ALLOCATED:
				return (await this.#recordAllocations([m]))[0];
			case MsgType.COPY_ERROR:
				// The kernel failed the bios and remembered nothing; the plugin
				// must not keep an allocation that never received its data.
				this.stats.errors++;
				this.log.error({ block: m.block, errno: m.error }, 'copy-first failed in the kernel');
				await this.image.copyFailed?.(m.block).catch((e: Error) => this.log.error({ err: e.message }, 'undoing the allocation failed'));
				return undefined;
			case MsgType.FEATURES:
			case MsgType.INVALIDATE_DONE:
				this.log.debug({ type: m.type, id: m.id }, 'kernel message');
				return undefined;
			default:
				this.log.warn({ type: m.type }, 'unexpected message');
				return undefined;
		}
	}

	/** Make durable the allocations the kernel's flush covered. */
	async #commit(m: CommitMsg): Promise<DaemonMessage> {
		this.stats.commits++;
		if (this.#unrecorded !== undefined && this.#unrecorded <= m.coveredAlloc) {
			// The kernel wrote the block's data; we could not note where: a
			// flush said to cover it must not claim success.
			this.stats.errors++;
			this.log.error({ allocSeq: this.#unrecorded, coveredAlloc: m.coveredAlloc }, 'a covered kernel allocation was never recorded: failing the flush');
			return commitDone(m.id, EIO);
		}
		try {
			await this.image.commit(this.#covers(m));
		} catch (e) {
			this.stats.errors++;
			this.log.error({ err: (e as Error).message }, 'commit failed: failing the flush');
			return commitDone(m.id, EIO);
		}
		for (const [block, seq] of this.#uncommitted) if (seq <= m.coveredSeq) this.#uncommitted.delete(block);
		for (const [block, seq] of this.#kernelAllocated) if (seq <= m.coveredAlloc) this.#kernelAllocated.delete(block);
		return commitDone(m.id, 0);
	}

	/**
	 * The kernel allocated blocks on first writes to COW answers: have
	 * the image record each report's range (one call per report), then
	 * acknowledge it (the kernel re-sends an unacknowledged one to the
	 * next daemon, so a failure is not acked). Blocks the image has
	 * already (a re-sent report) are acked as well. One async step for the
	 * whole group, and one settle per distinct promise, not one per report:
	 * under emulation the promise chains per report were what cowd spent
	 * its CPU on (the image's records of a group share one live-bitmap
	 * write, so they share its promise too).
	 */
	async #recordAllocations(group: readonly AllocatedMsg[]): Promise<Array<DaemonMessage | undefined>> {
		const image = this.image;
		// Per report: the image's promise that it is recorded, or why it could not be.
		const records: Array<Promise<void> | { failed: unknown }> = [];
		for (const m of group) {
			this.stats.allocations += m.count;
			try {
				if (!image.allocated) throw new Error(`${image.format} images cannot record allocations made by the kernel`);
				if (m.count < 1) throw new Error(`the kernel reported ${m.count} blocks allocated`);
				// Promise.resolve keeps a native promise as it is (shared ones stay shared).
				records.push(Promise.resolve(image.allocated(m.block, m.dev, m.sector, m.count)));
			} catch (e) {
				records.push({ failed: e });
			}
		}
		// Reports of one batch mostly share one promise (dscow's live write):
		// settle each distinct one once.
		const outcome = new Map<Promise<void>, { failed: unknown } | undefined>();
		for (const r of records) if (r instanceof Promise) outcome.set(r, undefined);
		await Promise.all(
			[...outcome.keys()].map((p) =>
				p.then(
					() => undefined,
					(e: unknown) => void outcome.set(p, { failed: e }),
				),
			),
		);
		const answers: Array<DaemonMessage | undefined> = [];
		for (let i = 0; i < group.length; i++) {
			const m = group[i]!;
			const r = records[i]!;
			const failure = r instanceof Promise ? outcome.get(r) : r;
			if (failure) {
				this.stats.errors++;
				if (this.#unrecorded === undefined || m.allocSeq < this.#unrecorded) this.#unrecorded = m.allocSeq;
				const err = isDmuError(failure.failed) ? failure.failed.message : String(failure.failed);
				this.log.error(
					{ block: m.block, count: m.count, dev: m.dev, sector: m.sector, allocSeq: m.allocSeq, err },
					'kernel allocation not recorded: flushes covering it will fail',
				);
				answers.push(undefined);
				continue;
			}
			const first = Number(m.block);
			for (let j = 0; j < m.count; j++) {
				// The latest number, should a block ever be reported twice:
				// its commit must wait for the later copy.
				const seq = j === 0 ? m.allocSeq : m.allocSeq + BigInt(j);
				const known = this.#kernelAllocated.get(first + j);
				if (known === undefined || known < seq) this.#kernelAllocated.set(first + j, seq);
			}
			answers.push(allocatedAck(m.id));
		}
		return answers;
	}
}

/** The ranges a batch's ALLOCATED messages report: no run of that batch may cover them. */
const allocatedRanges = (msgs: readonly DmuMessage[]): AllocatedMsg[] => msgs.filter((m): m is AllocatedMsg => m.type === MsgType.ALLOCATED);
