/**
 * cowd for one disk: open the image through its plugin, build (or take
 * over) /dev/mapper/<name>, serve the control device until told to stop,
 * then commit and take the device down.
 *
 * Order on start: kernel check, existing-device check, image lock, image
 * open (validates everything), loop devices, dm table, control device.
 * Anything failing undoes what came before it. Order on stop: finish the
 * batch in hand, close the control device, remove the dm device (the loop
 * devices are autoclear and go with it), close the image (final commit,
 * clean-shutdown mark), release the lock.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ControlDevice } from '../abi/control.js';
import { Feature } from '../abi/constants.js';
import { DmuError } from '../errors.js';
import { loadPlugin } from '../plugins/registry.js';
import type { Image, ScratchArea } from '../plugins/types.js';
import {
	attachLoop,
	checkKernel,
	detachLoop,
	dmCreate,
	dmRemove,
	dmTable,
	isBlockDevice,
	loopBackingFile,
	real,
} from './devices.js';
import { type ImageLock, lockImage } from './lock.js';
import { controlPath, keyOf, mapperPath, validateName } from './names.js';
import { ScratchFile } from './scratch.js';
import { DeviceCapacity } from './capacity.js';
import { diskSectors, Worker } from './worker.js';

export interface CowdOptions {
	plugin: string;
	name: string;
	image: string;
	base?: string;
	baseFormat?: string;
	readOnly: boolean;
	allowedRoots: string[];
	directIo: boolean;
	daemonTimeout?: number;
	maxMappings?: number;
	/** Most blocks one answer may cover (1: every block asks on its own). */
	maxRun?: number;
	scratchDir: string;
	log: Logger;
}

/** Features cowd relies on; a kernel without them is refused up front. */
const NEEDED = [
	['COPY_FIRST', Feature.COPY_FIRST],
	['ZERO', Feature.ZERO],
	['ERROR', Feature.ERROR],
	['COMMIT', Feature.COMMIT],
	['COMMIT_SEQ', Feature.COMMIT_SEQ],
] as const;

const exists = (p: string) =>
	access(p).then(
		() => true,
		() => false,
	);

/** The "userspace" table line for this image. */
export function tableLine(
	image: Pick<Image, 'virtualSize' | 'blockSize'>,
	key: string,
	devs: readonly string[],
	o: Pick<CowdOptions, 'daemonTimeout' | 'maxMappings'>,
): string {
	// Not rounded up to a whole block: that showed the guest sectors other
	// tools never see.
	const sectors = diskSectors(image);
	const feats: string[] = [];
	if (o.daemonTimeout !== undefined) feats.push('daemon_timeout', String(o.daemonTimeout));
	if (o.maxMappings !== undefined) feats.push('max_mappings', String(o.maxMappings));
	const featArgs = feats.length ? [String(feats.length), ...feats] : [];
	return ['0', String(sectors), 'userspace', key, String(image.blockSize / 512), ...featArgs, ...devs].join(' ');
}

/** Table of an existing device -> is it ours (userspace, same key)? */
export function parseTable(table: string): { key: string; blockSectors: number; devs: string[] } | undefined {
	const lines = table.split('\n').filter(Boolean);
	if (lines.length !== 1) return undefined;
	const f = lines[0]!.trim().split(/\s+/);
	if (f[2] !== 'userspace' || f.length < 6) return undefined;
	let i = 5;
	const nf = /^\d+$/.test(f[i] ?? '') && !/^\d+:\d+$/.test(f[i]!) ? Number(f[i]) : 0;
	if (nf) i += 1 + nf;
	return { key: f[3]!, blockSectors: Number(f[4]), devs: f.slice(i) };
}

export class Cowd {
	#worker: Worker | undefined;
	#stopRequested = false;
	#shutDown = false;
	/** This run created the dm device (so an error must remove it again). */
	#created = false;
	#image: Image | undefined;
	#scratch: ScratchFile | undefined;
	#lock: ImageLock | undefined;
	readonly key: string;
	readonly log: Logger;

	constructor(readonly o: CowdOptions) {
		validateName(o.name);
		this.key = keyOf(o.name);
		this.log = o.log.child({ disk: o.name });
	}

	/** Set up (or take over) the device and serve it until stop(). Resolves when done. */
	async run(): Promise<'stopped' | 'target-gone'> {
		const { o, log } = this;
		await checkKernel();
		const existing = await dmTable(o.name);
		const ours = existing !== undefined ? parseTable(existing) : undefined;
		if (existing !== undefined && (!ours || ours.key !== this.key)) {
			throw new DmuError(
				'DMU_ERR_NAME_IN_USE',
				`device ${o.name} exists and is not a dm-userspace disk with key ${this.key} (table: ${existing.split('\n')[0]})`,
			);
		}
		const takeover = ours !== undefined;
		if (!takeover && (await exists(controlPath(this.key)))) {
			throw new DmuError('DMU_ERR_NAME_IN_USE', `key ${this.key} is already used by another dm-userspace device (${controlPath(this.key)} exists)`);
		}

		const plugin = await loadPlugin(o.plugin);
		if (!o.readOnly) this.#lock = await lockImage(o.image, o.name);
		try {
			const scratchPath = join(o.scratchDir, `dmu-scratch-${this.key}`);
			let image: Image | undefined;
			const area: ScratchArea = {
				get dev() {
					return image ? image.devices.length : -1;
				},
				put: (data) => {
					this.#scratch ??= new ScratchFile(scratchPath, image!.blockSize);
					return this.#scratch.put(data);
				},
			};
			image = await plugin.open(o.image, {
				readOnly: o.readOnly,
				allowedRoots: o.allowedRoots,
				...(o.base ? { base: o.base } : {}),
				...(o.baseFormat ? { baseFormat: o.baseFormat } : {}),
				scratch: area,
				log,
				resume: takeover,
			});
			this.#image = image;
			if (image.capabilities.scratch) {
				this.#scratch ??= new ScratchFile(scratchPath, image.blockSize);
				await this.#scratch.ensure();
			}
			const nrDevs = image.devices.length + (this.#scratch ? 1 : 0);
			if (takeover) await this.#checkTakeover(image, ours!);
			else await this.#create(image);
			log.info(
				{ image: o.image, format: plugin.name, size: image.virtualSize.toString(), blockSize: image.blockSize, takeover },
				takeover ? 'took over the running disk' : `serving ${mapperPath(o.name)}`,
			);

			const ctl = await this.#openControl();
			for (const [name, bit] of NEEDED) {
				if (!ctl.has(bit)) throw new DmuError('DMU_ERR_KERNEL_FEATURES', `the dmu kernel module lacks feature ${name}; update it (${controlPath(this.key)})`);
			}
			if (ctl.features.nrDevs !== nrDevs || ctl.features.blockSectors * 512 !== image.blockSize) {
				await ctl.close();
				throw new DmuError(
					'DMU_ERR_TAKEOVER',
					`device ${o.name} has ${ctl.features.nrDevs} devices of ${ctl.features.blockSectors * 512}-byte blocks; the image needs ${nrDevs} of ${image.blockSize}`,
				);
			}
			const table = parseTable((await dmTable(o.name)) ?? '');
			const capacity = table ? await DeviceCapacity.fromTable(table.devs) : undefined;
			this.#worker = new Worker(ctl, image, log, capacity, o.maxRun);
			const end = this.#stopRequested ? 'stopped' : await this.#worker.run();
			if (end === 'target-gone') log.warn('the dm device was removed under us');
			await this.#shutdown();
			return end;
		} catch (e) {
			await this.#cleanupAfterError();
			throw e;
		}
	}

	/** Ask a running disk to stop (signal handlers); run() then shuts down and resolves. */
	requestStop(): void {
		this.#stopRequested = true;
		void this.#worker?.stop().catch((e) => this.log.error({ err: (e as Error).message }, 'stopping the worker failed'));
	}

	async #create(image: Image): Promise<void> {
		const { o, log } = this;
		const loops: string[] = [];
		const devs: string[] = [];
		try {
			for (const d of image.devices) {
				if (await isBlockDevice(d.path)) devs.push(d.path);
				else {
					const loop = await attachLoop(d.path, o.readOnly || !d.writable, o.directIo, log);
					loops.push(loop);
					devs.push(loop);
				}
			}
			if (this.#scratch) {
				// Buffered: the plugin writes the file, the kernel must see it at once.
				const loop = await attachLoop(this.#scratch.path, false, false, log);
				loops.push(loop);
				devs.push(loop);
			}
			const table = tableLine(image, this.key, devs, o);
			log.debug({ table }, 'dmsetup create');
			await dmCreate(o.name, table, o.readOnly);
			this.#created = true;
		} finally {
			// Held by the table: only marked autoclear. Not held (create failed): detached.
			for (const l of loops) await detachLoop(l, log);
		}
	}

	/** The running device must serve this very image. */
	async #checkTakeover(image: Image, t: { blockSectors: number; devs: string[] }): Promise<void> {
		const want = image.devices.length + (this.#scratch ? 1 : 0);
		const bad = (why: string) =>
			new DmuError('DMU_ERR_TAKEOVER', `device ${this.o.name} exists but does not serve ${this.o.image}: ${why}`);
		if (t.blockSectors * 512 !== image.blockSize) throw bad(`block size ${t.blockSectors * 512}, image has ${image.blockSize}`);
		if (t.devs.length !== want) throw bad(`${t.devs.length} devices in its table, the image needs ${want}`);
		for (const [i, d] of image.devices.entries()) {
			const backing = await loopBackingFile(t.devs[i]!);
			if (backing !== undefined && backing !== (await real(d.path))) throw bad(`device ${i} is ${backing}, not ${d.path}`);
		}
	}

	async #openControl(): Promise<ControlDevice> {
		// devtmpfs creates /dev/dmu/<key> when the target registers; give it a moment.
		const path = controlPath(this.key);
		for (let i = 0; i < 50 && !(await exists(path)); i++) await sleep(100);
		return ControlDevice.open(path);
	}

	/** Commit, remove the device if unused, close. */
	async #shutdown(): Promise<void> {
		this.#shutDown = true;
		const { o, log } = this;
		if (this.#worker) {
			await this.#worker.stop();
			log.info(this.#worker.stats, 'worker stopped');
		}
		try {
			await this.#image?.commit();
		} catch (e) {
			log.error({ err: (e as Error).message }, 'final commit failed');
		}
		let removed = true;
		if ((await dmTable(o.name)) !== undefined) {
			removed = await dmRemove(o.name, log);
			if (removed) log.info(`removed ${mapperPath(o.name)}`);
			else
				log.warn(
					`${mapperPath(o.name)} is in use, left in place: I/O that needs a daemon waits for one; run cowd again with the same arguments to serve it`,
				);
		}
		await this.#image?.close();
		await this.#scratch?.close(removed);
		await this.#lock?.release();
	}

	async #cleanupAfterError(): Promise<void> {
		if (this.#shutDown) return;
		await this.#worker?.stop().catch(() => undefined);
		if (this.#created) await dmRemove(this.o.name, this.log).catch(() => false);
		await this.#image?.close().catch(() => undefined);
		await this.#scratch?.close(false).catch(() => undefined);
		await this.#lock?.release().catch(() => undefined);
	}
}
