/**
 * qcow2, vhd and vmdk images attached with cowd through the real
 * kernel target (6.12 guest): file system made and checked, detached,
 * read back by qemu-img, reattached. See test/vm/cowd-formats.sh.
 */
import path from 'node:path';
import { execa } from 'execa';
import t from 'tap';
import { assertGuestResults, countChecks } from '../support/guest-results.js';
import { guestKernels, REPO_ROOT, runInVm, vmCheck } from '../support/vm.js';

const SCRIPT = path.join(REPO_ROOT, 'test/vm/cowd-formats.sh');
const FORMATS = 3;

t.test('image formats through cowd and the kernel', async (t) => {
	const k = guestKernels().find((g) => g.series === '6.12');
	if (!k) return t.fail('no 6.12 kernel in /boot (run .ci/install-deps)');
	await execa('make', ['-s', '-C', path.join(REPO_ROOT, 'kernel'), `KVER=${k.kver}`]);
	const r = await runInVm({ kernel: '6.12', name: 'cowd-formats', script: `source ${SCRIPT}`, timeoutSec: 1200 });
	t.comment(`VM ${r.durationMs} ms, run dir ${r.outDir}`);
	vmCheck(t, r);
	// The checks inside the per-format loop run once per format; qemu-img cannot check vhd.
	assertGuestResults(t, r.outDir, countChecks(SCRIPT) * FORMATS - 1);
});
