/**
 * A dscow image on a block device through cowd and the real kernel target
 * (6.1 and 6.12): created on a volume full of random bytes, refused on too
 * small a device or over another image, served without a loop device,
 * partial writes read zeros or the base around them (never the volume's
 * old bytes), ext4 survives detach and reattach, and what the kernel wrote
 * reads back through `dmu convert`. See test/vm/dscow-device.sh.
 */
import path from 'node:path';
import { execa } from 'execa';
import t from 'tap';
import { assertGuestResults, countChecks } from '../support/guest-results.js';
import { guestKernels, type KernelSeries, REPO_ROOT, runInVm, vmCheck } from '../support/vm.js';

const SCRIPT = path.join(REPO_ROOT, 'test/vm/dscow-device.sh');
const wanted = (process.env.DMU_VM_KERNELS ?? '6.1,6.12').split(',') as KernelSeries[];

for (const series of wanted) {
	t.test(`dscow on a block device, ${series}`, async (t) => {
		const k = guestKernels().find((g) => g.series === series);
		if (!k) return t.fail(`no ${series} kernel in /boot (run .ci/install-deps)`);
		await execa('make', ['-s', '-C', path.join(REPO_ROOT, 'kernel'), `KVER=${k.kver}`]);
		const r = await runInVm({
			kernel: series,
			name: `dscow-device-${series}`,
			script: `source ${SCRIPT}`,
			disks: [{ sizeMiB: 192 }],
			timeoutSec: 600,
		});
		t.comment(`VM ${r.durationMs} ms, run dir ${r.outDir}`);
		vmCheck(t, r);
		assertGuestResults(t, r.outDir, countChecks(SCRIPT));
	});
}
