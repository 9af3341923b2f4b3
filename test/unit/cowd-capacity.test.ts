/**
 * DeviceCapacity on a real loop device (the host has loop, not dm): the
 * loop device grows to its file when a mapping would pass its end, many
 * concurrent answers share one refresh, and a mapping past the file's end
 * is refused.
 */
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import t from 'tap';
import { DeviceCapacity } from '../../src/cowd/capacity.js';

t.test('grows a loop device under mappings past its end', async (t) => {
	const dir = mkdtempSync(join(tmpdir(), 'dmu-cap-'));
	const file = join(dir, 'img');
	writeFileSync(file, '');
	truncateSync(file, 1 << 20);
	const setup = await execa('losetup', ['--find', '--show', file], { reject: false });
	if (setup.exitCode !== 0) {
		t.fail(`losetup failed here: ${setup.stderr}`);
		return;
	}
	const loop = setup.stdout.trim();
	t.teardown(async () => {
		await execa('losetup', ['-d', loop], { reject: false });
		rmSync(dir, { recursive: true, force: true });
	});
	const majMin = (await readFile(`/sys/block/${basename(loop)}/dev`, 'utf8')).trim();
	const cap = await DeviceCapacity.fromTable([majMin]);
	t.equal(cap.devs[0]?.sectors, 2048n);
	t.equal(cap.devs[0]?.loop, loop);

	await cap.ensure(0, 2048n); // fits: nothing to do
	truncateSync(file, 4 << 20);
	// Several answers in one batch, each past the old end.
	await Promise.all([3000n, 5000n, 8192n, 6000n].map((end) => cap.ensure(0, end)));
	t.equal(cap.devs[0]?.sectors, 8192n, 'grown to the file');
	t.equal((await readFile(`/sys/block/${basename(loop)}/size`, 'utf8')).trim(), '8192', 'the kernel sees it');

	await t.rejects(cap.ensure(0, 9000n), { code: 'DMU_ERR_MAP_RANGE' }, 'past the file end is refused');
	await cap.ensure(7, 1n << 40n); // an index the table lacks is the kernel's to refuse
});
