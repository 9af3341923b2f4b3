/**
 * A scripted daemon for kernel tests: serves one dm-userspace control
 * device (/dev/dmu/<key>) through src/abi, answering MAP requests by the
 * rules of test/support/responder-rules.ts (format documented there) and
 * COMMIT requests as "commit" says (optionally held until a file appears
 * or a signal arrives). Run it in a guest with responder-cli.ts.
 *
 * Every event is appended to a JSON-lines log, so a test can count
 * requests, check their order and see the batch sizes per read. Lines
 * (all with "t": milliseconds since start; u64 values as numbers when
 * exact, strings otherwise):
 *   {"ev":"open","features":{...}}             FEATURES read at open
 *   {"ev":"rx","batch":N,"size":K,"type":"MAP","id":..,"flags":..,"block":..}
 *                                               one per message of read N (K messages)
 *   {"ev":"tx","type":"MAP_REPLY","rule":I,...} one per message written (rule -1: default)
 *   {"ev":"hold","type":"MAP"|"COMMIT","id":..} request left unanswered for now
 *   {"ev":"release"}                            held COMMITs released
 *   {"ev":"rejected","type":..,"id":..,"errno":..}  the kernel refused a reply
 *   {"ev":"eof"}                                target destroyed
 *   {"ev":"error","code":..,"message":..}       read/write failure (loop stops)
 *   {"ev":"stop","closeMs":..}                  stopped (SIGTERM); closeMs is how
 *                                               long closing the device took
 */
import fs from 'node:fs';
import { ControlDevice, ControlRejectError } from '../../src/abi/control.js';
import { MsgType, msgTypeName } from '../../src/abi/constants.js';
import { type DaemonMessage, type DmuMessage, commitDone } from '../../src/abi/messages.js';
import { type Rules, decide } from './responder-rules.js';

/** JSON-lines log; synchronous appends so nothing is lost when the process is killed. */
export class JsonLog {
	#fd: number | null;
	#start = Date.now();
	constructor(path: string | undefined) {
		this.#fd = path ? fs.openSync(path, 'a') : null;
	}
	write(ev: string, fields: Record<string, unknown> = {}): void {
		if (this.#fd === null) return;
		const line = JSON.stringify({ t: Date.now() - this.#start, ev, ...fields }, (_k, v) =>
			typeof v === 'bigint' ? (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString()) : v,
		);
		fs.writeSync(this.#fd, `${line}\n`);
	}
	close(): void {
		if (this.#fd !== null) fs.closeSync(this.#fd);
		this.#fd = null;
	}
}

/** A message as a flat log record: its type name plus every field. */
function fieldsOf(m: DmuMessage): Record<string, unknown> {
	return { ...m, type: msgTypeName(m.type) };
}

export interface ResponderOptions {
	/** /dev/dmu/<key> */
	device: string;
	rules: Rules;
	/** JSON-lines log file (appended). */
	logPath?: string;
}

export class Responder {
	readonly dev: ControlDevice;
	readonly rules: Rules;
	/** Resolves when the serve loop ends: target destroyed, stop(), or a fatal error. */
	readonly done: Promise<void>;
	#log: JsonLog;
	#stopping = false;
	#timers = new Set<NodeJS.Timeout>();
	#heldCommits: bigint[] = [];
	#commitsReleased: boolean;
	#holdPoll: NodeJS.Timeout | undefined;
	#onSignal = () => this.releaseCommits();

	private constructor(dev: ControlDevice, rules: Rules, log: JsonLog) {
		this.dev = dev;
		this.rules = rules;
		this.#log = log;
		const { holdFile, holdSignal } = rules.commit;
		this.#commitsReleased = holdFile === undefined && holdSignal === undefined;
		if (holdSignal) process.on(holdSignal, this.#onSignal);
		if (holdFile) {
			this.#holdPoll = setInterval(() => {
				if (fs.existsSync(holdFile)) this.releaseCommits();
			}, 50);
		}
		this.done = this.#serve();
		// Awaited by the CLI; this only keeps a failure from being "unhandled" meanwhile.
		this.done.catch(() => {});
	}

	/** Open the device (throws DmuError: no target, busy, permission) and start serving. */
	static async start(opts: ResponderOptions): Promise<Responder> {
		const log = new JsonLog(opts.logPath);
		const dev = await ControlDevice.open(opts.device);
		log.write('open', { device: opts.device, features: fieldsOf(dev.features) });
		return new Responder(dev, opts.rules, log);
	}

	async #serve(): Promise<void> {
		let batchNo = 0;
		try {
			while (!this.#stopping) {
				const batch = await this.dev.readBatch();
				if (this.#stopping) break;
				if (batch.length === 0) {
					this.#log.write('eof');
					break;
				}
				batchNo++;
				const now: DaemonMessage[] = [];
				const rules: number[] = [];
				for (const m of batch) {
					this.#log.write('rx', { batch: batchNo, size: batch.length, ...fieldsOf(m) });
					if (m.type === MsgType.MAP) {
						const d = decide(this.rules, m, this.dev.features.blockSectors);
						if (!d.reply) this.#log.write('hold', { type: 'MAP', id: m.id, rule: d.rule });
						else if (d.delayMs > 0) this.#later(d.delayMs, [d.reply], [d.rule]);
						else {
							now.push(d.reply);
							rules.push(d.rule);
						}
					} else if (m.type === MsgType.COMMIT) {
						if (!this.#commitsReleased) {
							this.#heldCommits.push(m.id);
							this.#log.write('hold', { type: 'COMMIT', id: m.id });
						} else if (this.rules.commit.delayMs > 0) {
							this.#later(this.rules.commit.delayMs, [commitDone(m.id, this.rules.commit.error)]);
						} else now.push(commitDone(m.id, this.rules.commit.error));
					}
					// FEATURES, INVALIDATE_DONE, COPY_ERROR: logged only.
				}
				// Everything answerable at once goes back as one batch.
				await this.#send(now, rules);
			}
		} catch (e) {
			if (!this.#stopping) {
				this.#log.write('error', { code: (e as { code?: string }).code, message: (e as Error).message });
				throw e;
			}
		}
	}

	#later(ms: number, msgs: DaemonMessage[], rules: number[] = []): void {
		const timer = setTimeout(() => {
			this.#timers.delete(timer);
			this.#send(msgs, rules).catch(() => {});
		}, ms);
		this.#timers.add(timer);
	}

	async #send(msgs: DaemonMessage[], rules: number[] = []): Promise<void> {
		if (msgs.length === 0 || this.#stopping) return;
		msgs.forEach((m, i) => {
			this.#log.write('tx', { ...fieldsOf(m), ...(rules[i] === undefined ? {} : { rule: rules[i] }) });
		});
		try {
			await this.dev.writeBatch(msgs);
		} catch (e) {
			if (!(e instanceof ControlRejectError)) {
				if (!this.#stopping) this.#log.write('error', { code: (e as { code?: string }).code, message: (e as Error).message });
				throw e;
			}
			for (const r of e.rejected) {
				this.#log.write('rejected', { type: msgTypeName(r.message.type), id: r.message.id, errno: r.errno });
			}
		}
	}

	/** Answer every held COMMIT and stop holding later ones. */
	releaseCommits(): void {
		if (this.#commitsReleased) return;
		this.#commitsReleased = true;
		clearInterval(this.#holdPoll);
		this.#log.write('release', { commits: this.#heldCommits.length });
		const held = this.#heldCommits.splice(0).map((id) => commitDone(id, this.rules.commit.error));
		this.#send(held).catch(() => {});
	}

	/**
	 * Stop: drop pending timers, close the device (unanswered requests are
	 * queued again by the kernel for the next daemon), close the log.
	 */
	async stop(): Promise<void> {
		if (this.#stopping) return;
		this.#stopping = true;
		for (const t of this.#timers) clearTimeout(t);
		clearInterval(this.#holdPoll);
		if (this.rules.commit.holdSignal) process.off(this.rules.commit.holdSignal, this.#onSignal);
		const start = Date.now();
		await this.dev.close();
		await this.done.catch(() => {});
		this.#log.write('stop', { closeMs: Date.now() - start });
		this.#log.close();
	}
}
