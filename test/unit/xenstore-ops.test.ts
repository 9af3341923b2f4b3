/**
 * Every node operation against a real xenstored, including the errors it
 * answers with (by wire name) and the paged DIRECTORY_PART fallback.
 */
import t from 'tap';
import { connect, isXenstoreError } from '../../src/xenstore/index.js';
import { xenstoreFixture } from '../support/xenstore-client.js';

const xsErr = (errno: string) => ({ code: `DMU_ERR_XENSTORE_${errno}` });

t.test('write, read, mkdir, directory, rm', async (t) => {
	const xs = await (await xenstoreFixture(t)).client();
	await xs.write('/dmu/a', 'one');
	await xs.write('/dmu/b/c', 'deep'); // parents are created
	t.equal(await xs.read('/dmu/a'), 'one');
	t.equal(await xs.read('/dmu/b/c'), 'deep');
	t.equal(await xs.read('/dmu/b'), '', 'implicit parent is empty');

	await xs.write('/dmu/a', 'two');
	t.equal(await xs.read('/dmu/a'), 'two', 'write replaces');
	await xs.write('/dmu/empty', '');
	t.equal(await xs.read('/dmu/empty'), '');

	const bytes = Buffer.from([0, 1, 2, 255, 0]);
	await xs.write('/dmu/bin', bytes);
	t.same(await xs.readBuffer('/dmu/bin'), bytes, 'values are bytes, NULs included');
	await xs.write('/dmu/utf8', 'größe ✓');
	t.equal(await xs.read('/dmu/utf8'), 'größe ✓');

	await xs.mkdir('/dmu/dir/sub');
	t.equal(await xs.read('/dmu/dir/sub'), '');
	await xs.mkdir('/dmu/dir/sub'); // existing: fine
	t.same((await xs.directory('/dmu')).sort(), ['a', 'b', 'bin', 'dir', 'empty', 'utf8']);
	t.same(await xs.directory('/dmu/a'), [], 'a leaf has no children');

	await xs.rm('/dmu/b');
	t.equal(await xs.tryRead('/dmu/b/c'), undefined, 'rm removes the subtree');
	t.equal(await xs.tryRead('/dmu/a'), 'two', 'tryRead of a present node');
	await xs.rm('/dmu/b'); // removing a missing node whose parent exists is fine
	t.notOk((await xs.directory('/dmu')).includes('b'));
});

t.test('errors carry the wire errno name', async (t) => {
	const xs = await (await xenstoreFixture(t)).client();
	const err = await xs.read('/no/such/node').catch((e: unknown) => e);
	t.ok(isXenstoreError(err, 'ENOENT'), 'ENOENT');
	if (isXenstoreError(err)) {
		t.equal(err.errno, 'ENOENT');
		t.equal(err.op, 'READ');
		t.equal(err.path, '/no/such/node');
		t.match(err.message, /^xenstore READ \/no\/such\/node: ENOENT/);
	}
	await t.rejects(xs.directory('/no/such'), xsErr('ENOENT'));
	await t.rejects(xs.getPermissions('/no/such'), xsErr('ENOENT'));
	await t.rejects(xs.rm('/no/such/node'), xsErr('ENOENT'), 'rm with a missing parent');
	await t.rejects(xs.read('relative/../bad//path'), xsErr('EINVAL'), 'malformed path');
	await t.rejects(xs.write('/dmu/x', 'y'.repeat(5000)), xsErr('E2BIG'), 'refused before sending');
	// The connection is still usable after all of that.
	await xs.write('/dmu/after', 'ok');
	t.equal(await xs.read('/dmu/after'), 'ok');
});

t.test('permissions round trip', async (t) => {
	const xs = await (await xenstoreFixture(t)).client();
	await xs.write('/perm/node', 'v');
	t.same(await xs.getPermissions('/perm/node'), [{ domid: 0, access: 'none' }], 'dom0-owned by default');
	await xs.setPermissions('/perm/node', [
		{ domid: 3, access: 'none' },
		{ domid: 5, access: 'read' },
		{ domid: 7, access: 'both' },
	]);
	t.same(await xs.getPermissions('/perm/node'), [
		{ domid: 3, access: 'none' },
		{ domid: 5, access: 'read' },
		{ domid: 7, access: 'both' },
	]);
	await t.rejects(xs.setPermissions('/no/such', [{ domid: 0, access: 'none' }]), xsErr('ENOENT'));
});

t.test('domain path, reset watches, ENOSYS for the removed RESTRICT', async (t) => {
	const fx = await xenstoreFixture(t);
	const xs = await fx.client();
	t.equal(await xs.getDomainPath(0), '/local/domain/0');
	t.equal(await xs.getDomainPath(12), '/local/domain/12');
	await xs.resetWatches();
	t.pass('RESET_WATCHES accepted');
});

t.test('a directory too big for one reply is read in pages', async (t) => {
	const xs = await (await xenstoreFixture(t)).client();
	// 400 children of 24 bytes: ~10 KB of names, over the 4 KB reply limit.
	const names = Array.from({ length: 400 }, (_, i) => `child-${String(i).padStart(6, '0')}-xxxxxxxxx`);
	await xs.transaction(async (tx) => {
		for (const n of names) await tx.write(`/big/${n}`, '');
	});
	const listed = await xs.directory('/big');
	t.equal(listed.length, names.length);
	t.same([...listed].sort(), names);
});

t.test('connect: path option, XENSTORED_PATH, and a clear failure', async (t) => {
	const fx = await xenstoreFixture(t);
	const saved = process.env.XENSTORED_PATH;
	t.teardown(() => {
		if (saved === undefined) delete process.env.XENSTORED_PATH;
		else process.env.XENSTORED_PATH = saved;
	});
	process.env.XENSTORED_PATH = fx.daemon.socketPath;
	const viaEnv = await connect();
	t.equal(viaEnv.path, fx.daemon.socketPath);
	await viaEnv.write('/env', '1');
	await viaEnv.close();
	await t.rejects(viaEnv.read('/env'), xsErr('ECONNRESET'), 'requests after close fail');
	await viaEnv.close(); // idempotent

	await t.rejects(connect({ path: '/nonexistent/xenstored.sock' }), xsErr('ECONNREFUSED'));
});

t.test('daemon dying fails requests in flight with ECONNRESET', async (t) => {
	const fx = await xenstoreFixture(t);
	const xs = await fx.client();
	await xs.write('/x', '1');
	process.kill(fx.daemon.pid, 'SIGKILL');
	await t.rejects(xs.read('/x'), xsErr('ECONNRESET'));
});
