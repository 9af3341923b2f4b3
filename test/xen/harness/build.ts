/**
 * Builds (and caches) what a Xen-in-QEMU boot needs: the hypervisor as an
 * ELF QEMU's multiboot loader accepts, and the dom0 and domU initramfs
 * images (busybox-static, a few modules of the guest kernel, an init script
 * from this directory).
 *
 * Artefacts live in <repo>/.cache/xen/, named by a hash of their inputs
 * (paths, sizes and mtimes of the files used, the init script's text), so a
 * kernel update or an edited init script rebuilds them and nothing else does.
 * Files are written to a temporary name and renamed, so concurrent builders
 * never see half a file.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { execa } from 'execa';
import { DmuError } from '../../../src/errors.js';

/** The checkout root: the nearest ancestor holding test/xen/harness/dom0-init. */
export function repoRoot(): string {
	let dir = dirname(fileURLToPath(import.meta.url));
	for (;;) {
		if (existsSync(join(dir, 'test/xen/harness/dom0-init'))) return dir;
		const up = dirname(dir);
		if (up === dir) throw new DmuError('DMU_ERR_XEN_HARNESS', 'cannot find test/xen/harness above this module');
		dir = up;
	}
}

/** Shell scripts of the harness (dom0-init, dom0-run.sh, ...). */
export const harnessDir = (): string => join(repoRoot(), 'test/xen/harness');
export const cacheDir = (): string => join(repoRoot(), '.cache/xen');

/** Modules the dom0 initramfs loads to mount the host root over 9p. */
const DOM0_MODULES = ['virtio_pci', '9pnet_virtio', '9p'];
/** Modules the domU initramfs loads to see its disks. */
const DOMU_MODULES = ['xen-blkfront'];
/** Bump when the layout of a built image changes without its inputs changing. */
const BUILD_FORMAT = 3;
/** Boot dom0 and domUs from the unpacked ELF rather than the bzImage. */
const BOOT_ELF_KERNEL = true;

/** Compare dotted/dashed version strings numerically ("6.1.0-56" < "6.1.0-100"). */
function compareVersions(a: string, b: string): number {
	const pa = a.split(/[.\-+]/);
	const pb = b.split(/[.\-+]/);
	for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
		const x = pa[i] ?? '';
		const y = pb[i] ?? '';
		const nx = Number(x);
		const ny = Number(y);
		const c = Number.isInteger(nx) && Number.isInteger(ny) && x !== '' && y !== '' ? nx - ny : x.localeCompare(y);
		if (c !== 0) return c;
	}
	return 0;
}

/**
 * The newest Debian 6.1 kernel in /boot (or env KVER_61), used both as the
 * PV dom0 and as the domU kernel.
 */
export async function findKernel61(): Promise<{ kver: string; vmlinuz: string }> {
	const fromEnv = process.env.KVER_61;
	const names = (await readdir('/boot'))
		.filter((n) => /^vmlinuz-6\.1\.\d/.test(n))
		.map((n) => n.slice('vmlinuz-'.length));
	const kver = fromEnv ?? names.sort(compareVersions).at(-1);
	if (kver === undefined) throw new DmuError('DMU_ERR_XEN_HARNESS', 'no /boot/vmlinuz-6.1.* kernel installed');
	const vmlinuz = `/boot/vmlinuz-${kver}`;
	if (!existsSync(vmlinuz)) throw new DmuError('DMU_ERR_XEN_HARNESS', `${vmlinuz} not found (KVER_61=${kver})`);
	return { kver, vmlinuz };
}

/** Files' identities (path, size, mtime) and extra strings, hashed. */
async function inputsKey(files: string[], extra: string[]): Promise<string> {
	const h = createHash('sha256');
	h.update(`format ${BUILD_FORMAT}\n`);
	for (const f of files) {
		const s = await stat(f);
		h.update(`${f} ${s.size} ${s.mtimeMs}\n`);
	}
	for (const e of extra) h.update(`${e}\n`);
	return h.digest('hex').slice(0, 16);
}

async function writeAtomically(path: string, data: Buffer): Promise<void> {
	await mkdir(dirname(path), { recursive: true });
	const tmp = `${path}.tmp-${process.pid}`;
	await writeFile(tmp, data);
	await rename(tmp, path);
}

/** The hypervisor: /boot/xen-4.17*-amd64.gz, gunzipped (QEMU's multiboot loader wants the ELF). */
export async function xenElf(): Promise<string> {
	const gz = (await readdir('/boot'))
		.filter((n) => /^xen-4\.17.*-amd64\.gz$/.test(n))
		.sort(compareVersions)
		.at(-1);
	if (gz === undefined) throw new DmuError('DMU_ERR_XEN_HARNESS', 'no /boot/xen-4.17*-amd64.gz (package xen-hypervisor-4.17-amd64)');
	const src = join('/boot', gz);
	const out = join(cacheDir(), `xen-${await inputsKey([src], [])}.elf`);
	if (!existsSync(out)) await writeAtomically(out, gunzipSync(await readFile(src)));
	return out;
}

/** Module files for `names` and their dependencies, in load order. */
async function moduleFiles(kver: string, names: string[]): Promise<string[]> {
	const files: string[] = [];
	// One module per call: modprobe takes further words as module parameters.
	for (const name of names) {
		const { stdout } = await execa('modprobe', ['-S', kver, '--show-depends', name]);
		for (const line of stdout.split('\n')) {
			const m = /^insmod (\S+)/.exec(line);
			if (m?.[1] !== undefined && !files.includes(m[1])) files.push(m[1]);
		}
	}
	if (files.length === 0) throw new DmuError('DMU_ERR_XEN_HARNESS', `no modules found for ${names.join(' ')} in ${kver}`);
	return files;
}

/**
 * A newc cpio archive of a directory's contents, owned by root. Left
 * uncompressed: under TCG, inflating costs more than copying, and libxc
 * cannot inflate a domU ramdisk made of several gzip members.
 */
export async function cpio(dir: string): Promise<Buffer> {
	const { stdout } = await execa('find', ['.'], { cwd: dir }).pipe('cpio', ['-o', '-H', 'newc', '--quiet', '-R', '0:0'], {
		cwd: dir,
		encoding: 'buffer',
	});
	return Buffer.from(stdout);
}

/**
 * An initramfs: busybox-static as /bin/busybox, `init` from the harness,
 * the modules (decompressed: busybox insmod cannot read .ko.xz) in
 * /lib/modules with their load order in /lib/modules/order.
 */
async function buildInitramfs(kind: string, kver: string, initScript: string, modules: string[]): Promise<string> {
	const busybox = '/bin/busybox';
	const init = join(harnessDir(), initScript);
	const mods = await moduleFiles(kver, modules);
	const key = await inputsKey([busybox, ...mods], [kver, await readFile(init, 'utf8')]);
	const out = join(cacheDir(), `${kind}-${kver}-${key}.cpio`);
	if (existsSync(out)) return out;

	await mkdir(cacheDir(), { recursive: true });
	const root = await mkdtemp(join(cacheDir(), `${kind}-build-`));
	try {
		for (const d of ['bin', 'dev', 'proc', 'sys', 'newroot', 'lib/modules']) await mkdir(join(root, d), { recursive: true });
		await copyFile(busybox, join(root, 'bin/busybox'));
		await copyFile(init, join(root, 'init'));
		const order: string[] = [];
		for (const f of mods) {
			const base = f.replace(/^.*\//, '').replace(/\.(xz|zst|gz)$/, '');
			if (f.endsWith('.ko')) await copyFile(f, join(root, 'lib/modules', base));
			else if (f.endsWith('.xz'))
				await execa('xz', ['-dc', f], { stdout: { file: join(root, 'lib/modules', base) } });
			else if (f.endsWith('.zst'))
				await execa('zstd', ['-dcq', f], { stdout: { file: join(root, 'lib/modules', base) } });
			else throw new DmuError('DMU_ERR_XEN_HARNESS', `unsupported module compression: ${f}`);
			order.push(base);
		}
		await writeFile(join(root, 'lib/modules/order'), `${order.join('\n')}\n`);
		await execa('chmod', ['755', join(root, 'init'), join(root, 'bin/busybox')]);
		await writeAtomically(out, await cpio(root));
	} finally {
		await rm(root, { recursive: true, force: true });
	}
	return out;
}

/**
 * The ELF vmlinux inside a bzImage. Xen's dom0 builder and libxc's domU
 * builder both load it as is, which skips an xz decompression that costs
 * seconds under TCG (for domUs, at every `xl create`, in dom0 userspace).
 */
export async function vmlinux(kver: string, vmlinuz: string): Promise<string> {
	const out = join(cacheDir(), `vmlinux-${kver}-${await inputsKey([vmlinuz], [])}`);
	if (existsSync(out)) return out;
	const image = await readFile(vmlinuz);
	const magic = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
	// The payload starts at one of the xz magics; keep the first that is an ELF.
	for (let off = image.indexOf(magic); off >= 0; off = image.indexOf(magic, off + 1)) {
		const r = await execa('xz', ['-dc', '--single-stream'], {
			input: image.subarray(off),
			encoding: 'buffer',
			reject: false,
			maxBuffer: 512 * 1024 * 1024,
		});
		const elf = Buffer.from(r.stdout);
		if (elf.length > 4 && elf.readUInt32BE(0) === 0x7f454c46) {
			await writeAtomically(out, elf);
			return out;
		}
	}
	throw new DmuError('DMU_ERR_XEN_HARNESS', `no xz-compressed ELF kernel found in ${vmlinuz}`);
}

export interface XenArtifacts {
	/** Guest kernel release, e.g. 6.1.0-56-amd64. */
	kver: string;
	/** Hypervisor ELF for QEMU's -kernel. */
	xenElf: string;
	/** Kernel of dom0 and of test domUs (one of the two below). */
	kernel: string;
	/** /boot/vmlinuz-<kver> (bzImage, xz inside). */
	vmlinuz: string;
	/** The ELF unpacked from it. */
	vmlinux: string;
	dom0Initramfs: string;
	/** domU ramdisk without a test script; runInXen appends the script to a per-run copy. */
	domuInitramfs: string;
}

/** Everything a boot needs, built on first use and cached. */
export async function xenArtifacts(): Promise<XenArtifacts> {
	const { kver, vmlinuz } = await findKernel61();
	const [elf, elfKernel, dom0, domu] = await Promise.all([
		xenElf(),
		vmlinux(kver, vmlinuz),
		buildInitramfs('dom0', kver, 'dom0-init', DOM0_MODULES),
		buildInitramfs('domu', kver, 'domu-init', DOMU_MODULES),
	]);
		const kernel = BOOT_ELF_KERNEL ? elfKernel : vmlinuz;
	return { kver, xenElf: elf, kernel, vmlinuz, vmlinux: elfKernel, dom0Initramfs: dom0, domuInitramfs: domu };
}
