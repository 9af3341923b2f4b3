/**
 * qcow2, vhd, vmdk and qcow images attached with cowd through the real
 * kernel target (6.12 guest): file system made and checked, detached,
 * read back by qemu-img, reattached. See test/vm/cowd-formats.sh.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import t from 'tap';
import { guestKernels, REPO_ROOT, runInVm, vmCheck } from '../support/vm.js';

const SCRIPT = path.join(REPO_ROOT, 'test/vm/cowd-formats.sh');
const FORMATS = 4;

t.test('image formats through cowd and the kernel', async (t) => {
	const k = guestKernels().find((g) => g.series === '6.12');
	if (!k) return t.fail('no 6.12 kernel in /boot (run .ci/install-deps)');
	await execa('make', ['-s', '-C', path.join(REPO_ROOT, 'kernel'), `KVER=${k.kver}`]);
	const r = await runInVm({ kernel: '6.12', name: 'cowd-formats', script: `source ${SCRIPT}`, timeoutSec: 1200 });
	t.comment(`VM ${r.durationMs} ms, run dir ${r.outDir}`);
	vmCheck(t, r);
	const res = path.join(r.outDir, 'results.txt');
	const lines = fs.existsSync(res) ? fs.readFileSync(res, 'utf8').split('\n').filter(Boolean) : [];
	for (const line of lines) {
		const m = /^(not ok|ok) - (.*)$/.exec(line);
		if (m?.[1] === 'ok') t.pass(m[2]!);
		else if (m) t.fail(m[2]!, { detail: line });
	}
	const perFormat = fs.readFileSync(SCRIPT, 'utf8').split('\n').filter((l) => /^\t+check /.test(l)).length;
	// vhd has no qemu-img check, so one check fewer.
	t.equal(lines.length, perFormat * FORMATS - 1, 'every check ran');
});
