/**
 * The scratch disk the VM benchmarks (bench/suite, bench/firsttouch) hand
 * their guest, and the temp folder it lives in.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';

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
