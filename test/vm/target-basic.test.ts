/**
 * dm-userspace target in a real kernel, both Debian kernels: hits and
 * misses, read-only faults, temporary/zero/error answers, ordered release,
 * copy-first, invalidation, batches, commit on fsync, daemon restart and
 * timeout, suspend/remove without a daemon, malformed and random input,
 * a failing data device (dm-flakey). One boot per kernel runs all of them
 * (test/vm/target/basic.sh, driven by the C responder in kernel/tools/).
 */
import t from 'tap';
import { runScenarios } from './target/run.js';

for (const series of ['6.1', '6.12'] as const) {
	t.test(`dm-userspace scenarios on ${series}`, async (t) => {
		await runScenarios(t, series, ['basic.sh'], [{ sizeMiB: 256 }, { sizeMiB: 256 }], 900);
	});
}
