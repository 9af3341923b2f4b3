/**
 * The VM harness itself: a real dm-linear + ext4 round trip on both guest
 * kernels, and proof that the health checks (kernel problems, timeout) fire.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import {
	bootCrashed,
	consoleTail,
	findKernelProblems,
	guestKernels,
	type KernelSeries,
	runInVm,
	vmCheck,
} from '../support/vm.js';

const SERIES: KernelSeries[] = ['6.1', '6.12'];
const installed = guestKernels();

// dm-linear shifted by 1 MiB over /dev/vda; the host then checks the ext4
// superblock really landed 1 MiB into the image, i.e. the mapping was applied.
const DM_LINEAR_SCRIPT = String.raw`
set -euo pipefail
set -x
node -e 'if (!process.version.startsWith("v20")) process.exit(1)'
fio --version
modprobe dm-mod
SZ=$(blockdev --getsz /dev/vda)
dmsetup create smoke --table "0 $((SZ - 2048)) linear /dev/vda 2048"
test -b /dev/mapper/smoke
fio --name=verify --filename=/dev/mapper/smoke --rw=randwrite --bs=4k --size=8M \
	--verify=crc32c --direct=1 --ioengine=psync --output=$DMU_OUT/fio.txt
mkfs.ext4 -q -F /dev/mapper/smoke
mkdir -p /mnt/s
head -c 1M /dev/urandom > $DMU_OUT/data
mount /dev/mapper/smoke /mnt/s
cp $DMU_OUT/data /mnt/s/data
umount /mnt/s
echo 3 > /proc/sys/vm/drop_caches
mount /dev/mapper/smoke /mnt/s
cmp $DMU_OUT/data /mnt/s/data
sha256sum < /mnt/s/data | cut -d' ' -f1 > $DMU_OUT/guest.sha256
umount /mnt/s
e2fsck -fn /dev/mapper/smoke
dmsetup remove smoke
test ! -e /dev/mapper/smoke
echo "$KVER" > $DMU_OUT/kver
# /dev/vdb: a host file passed read-only
test "$(blockdev --getro /dev/vdb)" = 1
head -c 4 /dev/vdb | od -An -tx1 | grep -q 'ab ab ab ab'
! dd if=/dev/zero of=/dev/vdb bs=4k count=1 oflag=direct 2>/dev/null
`;

t.test('kernel-problem filter (host only)', async (t) => {
	const consoleText = [
		'[    0.000000] calibrate_delay_direct() failed to get a good estimate for loops_per_jiffy.',
		'WARNING: printed by a script, no printk timestamp',
		'[   12.345678] WARNING: CPU: 1 PID: 42 at drivers/md/dm.c:100 f+0x1/0x2',
		'[   12.345679] Call Trace:',
		'[  130.000001] INFO: task kworker/0:1:12 blocked for more than 120 seconds.',
	].join('\n');
	const dmesgText = '[   12.345678] WARNING: CPU: 1 PID: 42 at drivers/md/dm.c:100 f+0x1/0x2\n[   13.0] BUG: kernel NULL pointer dereference\n';
	t.same(findKernelProblems(consoleText, dmesgText), [
		'[   12.345678] WARNING: CPU: 1 PID: 42 at drivers/md/dm.c:100 f+0x1/0x2',
		'[   12.345679] Call Trace:',
		'[  130.000001] INFO: task kworker/0:1:12 blocked for more than 120 seconds.',
		'[   13.0] BUG: kernel NULL pointer dereference',
	]);
	t.same(
		installed.map((k) => k.series),
		SERIES.filter((s) => installed.some((k) => k.series === s)),
		'guestKernels lists 6.1 before 6.12',
	);
	for (const k of installed) t.ok(k.kver.startsWith(`${k.series}.`), `${k.kver} is a ${k.series} kernel`);
});

for (const series of SERIES) {
	t.test(`dm-linear + ext4 round trip on ${series}`, async (t) => {
		const k = installed.find((g) => g.series === series);
		if (!k) {
			t.fail(`no ${series} kernel in /boot (run .ci/install-deps)`);
			return;
		}
		const roImg = path.join(os.tmpdir(), `dmu-smoke-ro-${process.pid}.img`);
		fs.writeFileSync(roImg, Buffer.alloc(1 << 20, 0xab));
		t.teardown(() => fs.rmSync(roImg, { force: true }));
		const r = await runInVm({
			kernel: series,
			name: `smoke-${series}`,
			script: DM_LINEAR_SCRIPT,
			disks: [{ sizeMiB: 256 }, { path: roImg, readOnly: true }],
			keepDisks: true,
			timeoutSec: 300,
		});
		t.comment(`${k.kver}: boot to script ${r.timing.bootMs} ms, whole VM ${r.durationMs} ms`);
		vmCheck(t, r);
		t.equal(fs.readFileSync(path.join(r.outDir, 'kver'), 'utf8').trim(), k.kver, 'KVER is the booted kernel');
		const data = fs.readFileSync(path.join(r.outDir, 'data'));
		const hostSum = createHash('sha256').update(data).digest('hex');
		t.equal(
			fs.readFileSync(path.join(r.outDir, 'guest.sha256'), 'utf8').trim(),
			hostSum,
			'file read back after drop_caches matches',
		);
		// ext4 magic 0xEF53 at byte 0x38 of the superblock (1024 bytes into
		// the file system), which starts 2048 sectors into the disk.
		const img = path.join(r.outDir, 'disk0.img');
		const fd = fs.openSync(img, 'r');
		const magic = Buffer.alloc(2);
		fs.readSync(fd, magic, 0, 2, 2048 * 512 + 1024 + 0x38);
		fs.closeSync(fd);
		fs.rmSync(img);
		t.equal(magic.readUInt16LE(0), 0xef53, 'superblock sits 1 MiB into the disk (dm-linear offset)');
		t.ok(fs.readFileSync(roImg).every((b) => b === 0xab), 'read-only disk unchanged');
	});
}

// The health checks must be able to fail; one kernel is enough for that.
const anyKernel = installed[0]?.series ?? '6.1';

// One VM for both directions of the kernel-log check: a printk WARNING must
// be reported, a script merely printing "WARNING:" must not.
t.test('a kernel WARNING is reported, script output is not', async (t) => {
	const r = await runInVm({
		kernel: anyKernel,
		name: 'smoke-warning',
		script: 'echo "WARNING: from stdout, BUG: none"\necho "WARNING: test" > /dev/kmsg\n',
		timeoutSec: 120,
	});
	t.equal(r.exitCode, 0, 'script itself succeeded');
	t.ok(
		r.kernelProblems.some((l) => l.includes('WARNING: test')),
		'kernelProblems has the printk WARNING line',
	);
	t.notOk(
		r.kernelProblems.some((l) => l.includes('from stdout')),
		'script stdout is not taken for a kernel problem',
	);
	if (r.kernelProblems.length !== 1) t.comment(r.kernelProblems.join('\n'), consoleTail(r));
});

t.test('a boot crash is told apart from a crash in the test (host only)', async (t) => {
	const oops = '[    1.378377] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n[    1.381747] Kernel panic - not syncing: Fatal exception in interrupt';
	t.ok(bootCrashed(`[    0.100000] Linux version 6.12\n${oops}`), 'an Oops before the script started');
	t.notOk(bootCrashed(`@@DMU script-start uptime=1.2\n${oops}`), 'an Oops once the script runs is the test\'s');
	t.notOk(bootCrashed('[    0.100000] Linux version 6.12\n'), 'a boot that just stopped (a timeout) is no crash');
	t.notOk(bootCrashed('Kernel panic printed by something without a printk time\n'), 'only kernel lines count');
});

// rdinit= names no program: the kernel finds no init and no root, and
// panics before the harness's init could start the script, both times.
t.test('a guest kernel that dies before the script is booted once more', async (t) => {
	const r = await runInVm({
		kernel: anyKernel,
		name: 'smoke-bootcrash',
		script: 'exit 0\n',
		kernelArgs: 'rdinit=/nonexistent',
		timeoutSec: 60,
	});
	t.equal(r.timing.bootAttempts, 2, 'booted twice');
	t.equal(r.exitCode, -1, 'no script ran');
	t.equal(r.timedOut, false, 'not a timeout');
	const first = path.join(r.outDir, 'console-boot1.log');
	t.ok(fs.existsSync(first) && fs.readFileSync(first, 'utf8').includes('Kernel panic'), 'the first boot\'s console is kept');
	t.ok(r.kernelProblems.some((l) => l.includes('Kernel panic')), 'the second crash is reported');
});

t.test('a hung guest is killed and reported as timedOut', async (t) => {
	const r = await runInVm({
		kernel: anyKernel,
		name: 'smoke-timeout',
		script: 'sleep infinity\n',
		timeoutSec: 20,
	});
	t.equal(r.timedOut, true, 'timedOut');
	t.equal(r.exitCode, -1, 'no exit code');
	t.ok(r.durationMs < 40_000, `killed near the bound (${r.durationMs} ms)`);
});
