/**
 * cowd's host-testable parts: decisions become the right MAP_REPLY bytes,
 * table lines the kernel accepts, status parsing, the image lock, the
 * scratch file. (The daemon against the real kernel: test/vm/cowd-*.)
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { decodeBatch, encodeBatch } from '../../src/abi/codec.js';
import { MapFlag, MsgType } from '../../src/abi/constants.js';
import { parseTable, tableLine } from '../../src/cowd/daemon.js';
import { parseStatus } from '../../src/cowd/devices.js';
import { lockImage } from '../../src/cowd/lock.js';
import { keyOf, validateName } from '../../src/cowd/names.js';
import { mapReply } from '../../src/abi/messages.js';
import { toReply, trimRuns } from '../../src/cowd/reply.js';
import { ScratchFile } from '../../src/cowd/scratch.js';

t.test('decisions become MAP_REPLY messages that survive the codec', async (t) => {
	const cases = [
		{
			d: { kind: 'map', dev: 0, sector: 128n, writable: true, durable: false, copyFrom: { dev: 1, sector: 0n } } as const,
			flags: MapFlag.WRITABLE | MapFlag.COPY_FIRST,
			fields: { dev: 0, sector: 128n, srcDev: 1, srcSector: 0n },
		},
		{ d: { kind: 'map', dev: 1, sector: 256n, writable: false, durable: true } as const, flags: MapFlag.DURABLE, fields: { dev: 1, sector: 256n } },
		{ d: { kind: 'map', dev: 2, sector: 8n, writable: false, temporary: true } as const, flags: MapFlag.TEMPORARY, fields: { dev: 2 } },
		{ d: { kind: 'zero' } as const, flags: MapFlag.ZERO, fields: {} },
		{ d: { kind: 'error', errno: 5 } as const, flags: MapFlag.ERROR, fields: { error: 5 } },
	];
	for (const c of cases) {
		const msg = toReply(42n, 7n, c.d);
		t.equal(msg.type, MsgType.MAP_REPLY);
		t.equal(msg.flags, c.flags, `${c.d.kind} flags`);
		t.match(msg, { id: 42n, block: 7n, ...c.fields });
		const [back] = decodeBatch(encodeBatch([msg]));
		t.same(back, msg, 'round trip through the codec');
	}
});

t.test('runs: in the reply only when they cover more than one block', async (t) => {
	t.equal(toReply(1n, 7n, { kind: 'map', dev: 1, sector: 8n, writable: false, run: 16 }).run, 16);
	t.equal(toReply(1n, 7n, { kind: 'zero', run: 5 }).run, 5);
	t.equal(toReply(1n, 7n, { kind: 'map', dev: 1, sector: 8n, writable: false, run: 1 }).run, 0);
	t.equal(toReply(1n, 7n, { kind: 'map', dev: 1, sector: 8n, writable: false }).run, 0);
});

t.test('a batch never contradicts its own runs', async (t) => {
	const base = (id: bigint, block: bigint, run = 0) => mapReply({ id, block, flags: MapFlag.DURABLE, dev: 1, sector: block * 8n, run });
	const own = (id: bigint, block: bigint) => mapReply({ id, block, flags: MapFlag.WRITABLE, dev: 0, sector: 1000n + block * 8n });
	// A sequential first read: neighbours agree with the run, which stays whole.
	const seq = [base(1n, 10n, 100), base(2n, 11n, 99), base(3n, 12n, 98)];
	t.same(
		trimRuns(seq, 8n).map((r) => (r as { run: number }).run),
		[100, 99, 98],
		'agreeing neighbours keep the runs',
	);
	// Block 14 is being allocated in the same batch: runs over it stop before it.
	const mixed = [base(1n, 10n, 100), own(2n, 14n), base(3n, 13n, 2), base(4n, 20n, 5)];
	const out = trimRuns(mixed, 8n);
	t.same(
		out.map((r) => (r as { run: number }).run),
		[4, 0, 0, 5],
		'runs cut before the allocated block (a run of one becomes 0)',
	);
	t.equal(out[1], mixed[1], 'other replies untouched');
	const zeros = [mapReply({ id: 1n, block: 0n, flags: MapFlag.ZERO, run: 10 }), mapReply({ id: 2n, block: 3n, flags: MapFlag.ZERO })];
	t.equal((trimRuns(zeros, 8n)[0] as { run: number }).run, 10, 'zero answers agree whatever the sector');
});

t.test('table lines and their parsing', async (t) => {
	const img = { virtualSize: 1n << 30n, blockSize: 65536 };
	t.equal(tableLine(img, 'vm1', ['/dev/loop0', '/dev/loop1'], {}), '0 2097152 userspace vm1 128 /dev/loop0 /dev/loop1');
	t.equal(
		tableLine({ virtualSize: 1000n * 512n, blockSize: 65536 }, 'k', ['/dev/loop0'], { daemonTimeout: 0, maxMappings: 1024 }),
		'0 1000 userspace k 128 4 daemon_timeout 0 max_mappings 1024 /dev/loop0',
		'length is the virtual size (a short last block), not rounded up; feature args counted',
	);
	t.same(parseTable('0 2097152 userspace vm1 128 7:0 7:1'), { key: 'vm1', blockSectors: 128, devs: ['7:0', '7:1'] });
	t.same(parseTable('0 1024 userspace k 128 2 daemon_timeout 5 7:0'), { key: 'k', blockSectors: 128, devs: ['7:0'] });
	t.equal(parseTable('0 2097152 linear 8:0 0'), undefined, 'another target is not ours');
	t.equal(parseTable('0 10 userspace a 8 7:0\n10 10 linear 8:0 0'), undefined, 'multi-segment table is not ours');
});

t.test('status counters', async (t) => {
	const s = parseStatus('0 2097152 userspace 10 3 0 2 1 1 0 3 daemon=connected');
	t.match(s, { hits: 10n, misses: 3n, pending: 0, copies: 2n, flushes: 1n, commits: 1n, evictions: 0n, mapped: 3, daemon: 'connected' });
	t.equal(parseStatus('0 100 linear 8:0 0'), undefined);
});

t.test('names and keys', async (t) => {
	t.equal(keyOf('vm1'), 'vm1');
	t.equal(keyOf('my disk:1+x'), 'my_disk_1_x');
	t.equal(keyOf('x'.repeat(100)).length, 48);
	t.throws(() => validateName('a/b'), /bad device name/);
	t.throws(() => validateName(''), /bad device name/);
	validateName('dmu-vm_1.disk0');
});

t.test('image lock: one read-write daemon, stale locks taken over', async (t) => {
	const dir = await mkdtemp(join(tmpdir(), 'cowd-lock-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const img = join(dir, 'a.img');
	await writeFile(img, 'x');
	// A live process whose command line says cowd holds the lock.
	const holder = spawn(process.execPath, ['-e', 'setTimeout(()=>{}, 60000)', 'cowd'], { stdio: 'ignore' });
	t.teardown(() => holder.kill());
	await new Promise((r) => setTimeout(r, 200));
	const st = await stat(img, { bigint: true });
	const l = await lockImage(img, 'first');
	t.match(await readFile(l.path, 'utf8'), `${process.pid}\nfirst\n`);
	await writeFile(l.path, `${holder.pid}\nvm9\n${img}\n`);
	t.match(l.path, `image-${st.dev}-${st.ino}.lock`);
	await t.rejects(lockImage(img, 'second'), /already open read-write by cowd pid \d+ \(disk vm9\)/);
	holder.kill();
	await new Promise((r) => holder.once('exit', r));
	const l2 = await lockImage(img, 'second');
	t.pass('stale lock taken over');
	await l2.release();
	await l.release();
});

t.test('scratch file: whole zero-padded slots, round robin', async (t) => {
	const dir = await mkdtemp(join(tmpdir(), 'cowd-scratch-'));
	t.teardown(() => rm(dir, { recursive: true, force: true }));
	const s = new ScratchFile(join(dir, 'scratch'), 2 * 1024 * 1024);
	t.equal(s.slots, 128);
	const a = await s.put(Buffer.from('abc'));
	const b = await s.put(Buffer.alloc(2 * 1024 * 1024, 1));
	t.equal(a, 0n);
	t.equal(b, 4096n, 'second slot starts 2 MiB in');
	const f = await readFile(join(dir, 'scratch'));
	t.equal(f.length, 128 * 2 * 1024 * 1024, 'full sparse size');
	t.equal(f.subarray(0, 3).toString(), 'abc');
	t.equal(f[3], 0, 'padded with zeros');
	await s.close(true);
});
