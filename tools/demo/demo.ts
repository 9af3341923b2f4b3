/**
 * `npm run demo`: runs tools/demo/demo.sh on this host when it can attach
 * dmu disks (device-mapper and the dmu module present, root), otherwise in
 * the test VM (QEMU with Debian's 6.1 kernel), building the module first.
 */
import { execa } from 'execa';
import { join } from 'node:path';
import { runChecks } from '../../src/cli/commands/doctor.js';
import { guestKernels, REPO_ROOT, runInVm, consoleTail } from '../../test/support/vm.js';

const script = join(REPO_ROOT, 'tools/demo/demo.sh');

async function main(): Promise<number> {
	const checks = await runChecks();
	const ready = checks.every((c) => !c.required || c.status === 'ok');
	if (ready && process.getuid?.() === 0) {
		console.log('dmu: this host can attach disks; running the demo here');
		const r = await execa('bash', [script], { stdio: 'inherit', reject: false });
		return r.exitCode ?? 1;
	}
	const k = guestKernels().find((g) => g.series === '6.1');
	if (!k) {
		console.error('demo: this host cannot attach dmu disks and has no Debian 6.1 kernel for the VM; run: bash .ci/install-deps');
		return 1;
	}
	console.log(`dmu: this host cannot attach disks itself (see \`dmu doctor\`); running the demo in a QEMU guest with Debian's ${k.kver}`);
	console.log(`building kernel/build/${k.kver}/dmu.ko`);
	await execa('make', ['-s', '-C', join(REPO_ROOT, 'kernel'), `KVER=${k.kver}`], { stdio: 'inherit' });
	const r = await runInVm({
		kernel: '6.1',
		name: 'demo',
		script: `modprobe dm-mod && modprobe loop && insmod kernel/build/$KVER/dmu.ko && bash ${script} 2>&1 | tee "$DMU_OUT/demo.txt"; exit \${PIPESTATUS[0]}`,
		timeoutSec: 600,
	});
	const out = (await import('node:fs')).readFileSync(join(r.outDir, 'demo.txt'), { encoding: 'utf8', flag: 'a+' });
	process.stdout.write(out);
	if (r.exitCode !== 0 || r.kernelProblems.length) {
		console.error(`demo failed in the VM (exit ${r.exitCode}); console tail:\n${consoleTail(r)}`);
		return 1;
	}
	console.log(`\ndemo passed in ${(r.durationMs / 1000).toFixed(0)} s (VM run dir: ${r.outDir})`);
	return 0;
}

main().then(
	(code) => process.exit(code),
	(e) => {
		console.error(`demo: ${(e as Error).message}`);
		process.exit(1);
	},
);
