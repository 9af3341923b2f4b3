/**
 * xl's disk-spec lexer with and without tools/xen-scripts/xl-dmu-prefix.patch:
 * the stock library rejects the legacy `dmu:` spelling, the patched one turns
 * it into script=block-dmu with the whole target kept, and leaves every
 * other spelling as it was.
 */
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import t from 'tap';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const cache = join(repo, '.cache', 'libxlutil');
const patch = join(repo, 'tools/xen-scripts/xl-dmu-prefix.patch');
const parser = join(cache, 'xl-parse-disk');

async function build(): Promise<void> {
	mkdirSync(cache, { recursive: true });
	const lib = join(cache, 'libxlutil.so.4.17');
	if (!existsSync(lib) || statSync(lib).mtimeMs < statSync(patch).mtimeMs) {
		await execa(join(repo, 'tools/xen-scripts/build-libxlutil'), [cache]);
	}
	await execa('gcc', ['-Wall', '-O2', '-o', parser, join(repo, 'test/support/xl-parse-disk.c'), '-lxlutil', '-lxenlight']);
}

async function parse(spec: string, patched: boolean): Promise<{ ok: boolean; fields: Record<string, string>; stderr: string }> {
	const r = await execa(parser, [spec], { reject: false, env: patched ? { LD_LIBRARY_PATH: cache } : {} });
	const fields: Record<string, string> = {};
	for (const line of r.stdout.split('\n')) {
		const i = line.indexOf('=');
		if (i > 0) fields[line.slice(0, i)] = line.slice(i + 1);
	}
	return { ok: r.exitCode === 0, fields, stderr: r.stderr };
}

t.before(build);

const legacy = 'dmu:dscow:/tmp/x.dscow:/dev/vols/base,hda1,w';

t.test('stock xl rejects the dmu: prefix', async (t) => {
	const r = await parse(legacy, false);
	t.notOk(r.ok);
	t.match(r.stderr, /unknown value for format/);
});

t.test('patched xl maps dmu: to block-dmu and keeps the target whole', async (t) => {
	const r = await parse(legacy, true);
	t.ok(r.ok, r.stderr);
	t.same(r.fields, { target: 'dscow:/tmp/x.dscow:/dev/vols/base', script: 'block-dmu', vdev: 'hda1', access: 'rw', format: 'raw' });
	const ro = await parse('dmu:qcow2:/images/a b.qcow2,xvdb,r', true);
	t.equal(ro.fields.target, 'qcow2:/images/a b.qcow2');
	t.equal(ro.fields.access, 'ro');
	t.equal(ro.fields.vdev, 'xvdb');
});

t.test('the stock script= spelling and other specs parse the same with both libraries', async (t) => {
	for (const spec of [
		'vdev=hda1, access=rw, script=block-dmu, target=dscow:/tmp/x.dscow:/dev/vols/base',
		'/dev/vg/guest,raw,xvda,rw',
		'phy:/dev/loop0,xvda,w',
		'nbd:host:1234,xvdc,r',
	]) {
		const stock = await parse(spec, false);
		const patched = await parse(spec, true);
		t.same(patched, stock, spec);
	}
});

t.test('a dmu: spec with a doubled script or target is still an error', async (t) => {
	const r = await parse('script=block-other,dmu:dscow:/a:/b,xvda,w', true);
	t.notOk(r.ok);
	t.match(r.stderr, /respecified/);
});
