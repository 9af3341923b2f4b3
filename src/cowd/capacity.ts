/**
 * Device sizes as the kernel sees them. Formats that grow their file when
 * they allocate (qcow2, qcow, vhd dynamic, vmdk sparse, the scratch file)
 * can hand out a mapping past the end of the loop device made at attach
 * time; the kernel refuses such a mapping. Before an answer goes out,
 * ensure() grows the loop device to its file's size (LOOP_SET_CAPACITY,
 * through `losetup -c`) when the mapping would not fit.
 */
import { readFile, readlink } from 'node:fs/promises';
import { basename } from 'node:path';
import { execa } from 'execa';
import { DmuError } from '../errors.js';

interface Dev {
	majMin: string;
	/** /dev/loopN for loop devices; undefined for other block devices (fixed size). */
	loop: string | undefined;
	sectors: bigint;
	/** A refresh in progress, so concurrent answers wait for one losetup. */
	growing?: Promise<void>;
}

async function sectorsOf(majMin: string): Promise<bigint> {
	return BigInt((await readFile(`/sys/dev/block/${majMin}/size`, 'utf8')).trim());
}

export class DeviceCapacity {
	private constructor(readonly devs: Dev[]) {}

	/** From the devices of the dm table, as major:minor (`dmsetup table` order). */
	static async fromTable(majMins: readonly string[]): Promise<DeviceCapacity> {
		const devs: Dev[] = [];
		for (const majMin of majMins) {
			const name = basename(await readlink(`/sys/dev/block/${majMin}`).catch(() => ''));
			devs.push({ majMin, loop: /^loop\d+$/.test(name) ? `/dev/${name}` : undefined, sectors: await sectorsOf(majMin) });
		}
		return new DeviceCapacity(devs);
	}

	/** Make sure sectors [0, end) of device `dev` exist in the kernel. */
	async ensure(dev: number, end: bigint): Promise<void> {
		const d = this.devs[dev];
		if (!d || end <= d.sectors) return; // out-of-range indexes are the kernel's to refuse
		// A refresh already running may have read the file's size before our
		// allocation grew it: after waiting for it, refresh once more
		// ourselves. A refresh we start sees the file as it is now.
		for (;;) {
			const ours = !d.growing;
			if (ours) d.growing = this.#grow(d).finally(() => (d.growing = undefined));
			await d.growing;
			if (ours || end <= d.sectors) break;
		}
		if (end > d.sectors) {
			throw new DmuError('DMU_ERR_MAP_RANGE', `mapping ends at sector ${end} of device ${dev} (${d.majMin}), which has ${d.sectors}`);
		}
	}

	async #grow(d: Dev): Promise<void> {
		if (d.loop) {
			const r = await execa('losetup', ['--set-capacity', d.loop], { reject: false });
			if (r.exitCode !== 0) throw new DmuError('DMU_ERR_LOOP', `losetup --set-capacity ${d.loop}: ${r.stderr.trim()}`);
		}
		d.sectors = await sectorsOf(d.majMin);
	}
}
