/**
 * Command-line pieces the benchmarks share (bench/suite, bench/target,
 * bench/firsttouch, bench/convert), so each option parses and fails the
 * same way in all.
 */
import { InvalidArgumentError, Option } from 'commander';
import { DmuError } from '../src/errors.js';
import { GUEST_CLOCKS, type GuestKernel, guestKernels } from '../test/support/vm.js';

/** Commander parser for a positive integer option named `name`. */
export const positive = (name: string) => (v: string) => {
	const n = Number(v);
	if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive integer`);
	return n;
};

/** The guest kernel --kernel names (6.1 or 6.12), as installed in /boot. */
export function guestKernelFor(series: string): GuestKernel {
	if (series !== '6.1' && series !== '6.12') throw new DmuError('DMU_ERR_BENCH_ARGS', '--kernel must be 6.1 or 6.12');
	const kernel = guestKernels().find((k) => k.series === series);
	if (!kernel) throw new DmuError('DMU_ERR_BENCH_KERNEL', `no ${series} guest kernel in /boot (run .ci/install-deps)`);
	return kernel;
}

/** --block-kib, a power of two from `minKib` to `maxKib`: its size in sectors. */
export function blockSectorsFor(blockKib: number, minKib: number, maxKib: number): number {
	if ((blockKib & (blockKib - 1)) !== 0 || blockKib < minKib || blockKib > maxKib) {
		throw new DmuError('DMU_ERR_BENCH_ARGS', `--block-kib must be a power of two from ${minKib} to ${maxKib}`);
	}
	return blockKib * 2;
}

/** --disk of the benchmarks that put a target straight on a device. */
export const diskOption = (byDefault: 'virtio' | 'null') =>
	new Option('--disk <kind>', 'backing device: virtio (the VM disk) or null (null_blk: no data, a bio costs CPU alone)')
		.choices(['virtio', 'null'])
		.default(byDefault);

/** --clock: the guest's clocksource (VmOptions.clock), the TSC by default as on real hardware. */
export const clockOption = () =>
	new Option('--clock <source>', 'guest clocksource: tsc, or hpet as the VM tests use (each HPET read is an emulated MMIO access)')
		.choices(GUEST_CLOCKS)
		.default('tsc');

/**
 * The entries of `all` a comma-separated list names (by id, else name), in
 * the list's order; without a list, all but those only run when asked for.
 */
export function pick<T extends { id?: string; name?: string; onlyIfAsked?: boolean }>(all: readonly T[], names: string | undefined, what: string): T[] {
	if (!names) return all.filter((a) => !a.onlyIfAsked);
	return names.split(',').map((n) => {
		const x = all.find((a) => (a.id ?? a.name) === n.trim());
		if (!x) throw new DmuError('DMU_ERR_BENCH_ARGS', `unknown ${what} "${n}" (one of ${all.map((a) => a.id ?? a.name).join(', ')})`);
		return x;
	});
}
