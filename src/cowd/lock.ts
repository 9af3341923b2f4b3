/**
 * One read-write daemon per image. The lock is a file named after the
 * image's device and inode, or a device node's device number (so two
 * paths to one file or disk collide), holding the owner's pid; a lock
 * whose pid is gone, or is not a cowd, is stale and taken over (a cowd
 * killed with -9 leaves one behind).
 */
import { mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DmuError } from '../errors.js';

const LOCK_DIRS = ['/run/dmu/locks', join(tmpdir(), 'dmu-locks')];

async function lockDir(): Promise<string> {
	for (const d of LOCK_DIRS) {
		try {
			await mkdir(d, { recursive: true, mode: 0o700 });
			return d;
		} catch {
			// next
		}
	}
	throw new DmuError('DMU_ERR_LOCK', `cannot create a lock directory (${LOCK_DIRS.join(', ')})`);
}

async function ownerAlive(pid: number): Promise<boolean> {
	if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return false;
	try {
		process.kill(pid, 0);
	} catch (e) {
		return (e as NodeJS.ErrnoException).code === 'EPERM';
	}
	// A reused pid that belongs to something else is not a holder.
	const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
	return cmd.includes('cowd');
}

export interface ImageLock {
	path: string;
	release(): Promise<void>;
}

export async function lockImage(image: string, disk: string): Promise<ImageLock> {
	let st: import('node:fs').BigIntStats;
	try {
		st = await stat(image, { bigint: true });
	} catch (e) {
		throw new DmuError('DMU_ERR_OPEN', `cannot open ${image}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
	}
	// Device nodes: /dev/mapper/x and /dev/dm-N are two inodes for one disk.
	const id = st.isBlockDevice() ? `blk-${st.rdev}` : `${st.dev}-${st.ino}`;
	const path = join(await lockDir(), `image-${id}.lock`);
	for (let attempt = 0; attempt < 3; attempt++) {
		try {
			const fh = await open(path, 'wx', 0o600);
			await fh.writeFile(`${process.pid}\n${disk}\n${image}\n`);
			await fh.close();
			return { path, release: () => rm(path, { force: true }) };
		} catch (e) {
			if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
		}
		const [pid, owner] = (await readFile(path, 'utf8').catch(() => '')).split('\n');
		if (await ownerAlive(Number(pid))) {
			throw new DmuError('DMU_ERR_IMAGE_BUSY', `${image} is already open read-write by cowd pid ${pid} (disk ${owner})`);
		}
		await rm(path, { force: true }); // stale
	}
	throw new DmuError('DMU_ERR_LOCK', `cannot take the lock ${path}`);
}
