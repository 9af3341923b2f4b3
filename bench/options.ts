/**
 * Command-line pieces the benchmarks share (bench/suite, bench/target,
 * bench/convert), so each option parses and fails the same way in all.
 */
import { InvalidArgumentError, Option } from 'commander';
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
