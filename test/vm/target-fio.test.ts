/**
 * dm-userspace target under load on both Debian kernels: fio randrw with
 * verify over 12,288 blocks (4 jobs) with max_mappings forcing evictions,
 * then ext4 on top (test/vm/target/fio.sh).
 */
import t from 'tap';
import { runScenarios } from './target/run.js';

for (const series of ['6.1', '6.12'] as const) {
	t.test(`dm-userspace under fio and ext4 on ${series}`, async (t) => {
		await runScenarios(t, series, ['fio.sh'], [{ sizeMiB: 64 }, { sizeMiB: 64 }], 900);
	});
}
