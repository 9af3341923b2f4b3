/**
 * What the VM benchmarks (bench/suite, bench/target, bench/firsttouch) hand
 * their guest: the dmu module, and the scratch disk with the temp folder
 * it lives in.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { DmuError } from '../src/errors.js';
import { REPO_ROOT } from '../test/support/vm.js';

/** kernel/build/<kver>/dmu.ko, built first when missing (or when `rebuild`). */
export async function ensureModule(kver: string, rebuild = false): Promise<string> {
	const ko = path.join(REPO_ROOT, 'kernel/build', kver, 'dmu.ko');
	if (fs.existsSync(ko) && !rebuild) return ko;
	const r = await execa('make', ['-C', path.join(REPO_ROOT, 'kernel'), `KVER=${kver}`], { reject: false, all: true });
	if (r.exitCode !== 0 || !fs.existsSync(ko)) {
		const last = (r.all ?? '').trim().split('\n').slice(-1)[0] ?? '';
		throw new DmuError('DMU_ERR_BENCH_MODULE', `cannot build dmu.ko for ${kver} (make -C kernel KVER=${kver}): ${last}`);
	}
	return ko;
}

/** A new temp folder, removed if the run is interrupted; the caller removes it when done. */
export function scratchDir(prefix: string): string {
	const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
	// An interrupted run must not leave GiBs behind. `once`: the VM
	// harness's own listener re-raises the signal, which must then kill us.
	for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
		process.once(sig, () => {
			fs.rmSync(dir, { recursive: true, force: true });
			if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
		});
	}
	return dir;
}

/** `baseMib` of random data (the base image), then room up to `totalMib` MiB. */
export async function makeScratchDisk(file: string, baseMib: number, totalMib: number): Promise<void> {
	await execa('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', `count=${baseMib}`, 'status=none']);
	// Allocated up front, so no system pays for the host growing a sparse
	// file, and synced, so the host is not writing the base back while the
	// first system is measured.
	await execa('fallocate', ['-l', `${totalMib}M`, file]);
	await execa('sync', [file]);
}
