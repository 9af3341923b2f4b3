/**
 * Command-line pieces the benchmarks share (bench/suite, bench/target,
 * bench/firsttouch, bench/convert), so each option parses and fails the
 * same way in all.
 */
import { InvalidArgumentError, Option } from 'commander';
import { DmuError } from '../src/errors.js';
import { GUEST_CLOCKS } from '../test/support/vm.js';

/** Commander parser for a positive integer option named `name`. */
export const positive = (name: string) => (v: string) => {
	const n = Number(v);
	if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive integer`);
	return n;
};

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
