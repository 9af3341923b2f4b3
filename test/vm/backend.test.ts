/**
 * Xen backend path in a real kernel (6.1 guest, no hypervisor): xenstored,
 * `dmu backend` and block-dmu run as libxl runs them over real dmu disks.
 * See test/vm/backend/backend.sh for the scenarios.
 */
import path from 'node:path';
import t from 'tap';
import { assertGuestResults, countChecks } from '../support/guest-results.js';
import { guestKernels, REPO_ROOT, runInVm, vmCheck } from '../support/vm.js';
import { buildShim } from '../support/xenstored.js';
import { buildFor } from './target/run.js';

const SCRIPT = path.join(REPO_ROOT, 'test/vm/backend/backend.sh');

t.test('xenstored + dmu backend + block-dmu over real dmu disks', async (t) => {
	const k = guestKernels().find((g) => g.series === '6.1');
	if (!k) return t.fail('no 6.1 kernel in /boot (run .ci/install-deps)');
	await buildFor(k.kver);
	const shim = await buildShim();
	const r = await runInVm({
		kernel: '6.1',
		name: 'backend',
		script: `source ${SCRIPT}`,
		env: { SHIM: shim },
		timeoutSec: 900,
	});
	t.comment(`VM ${r.durationMs} ms, run dir ${r.outDir}`);
	vmCheck(t, r);
	assertGuestResults(t, r.outDir, countChecks(SCRIPT));
});
