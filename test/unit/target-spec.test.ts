import t from 'tap';
import { formatTargetSpec, parseTargetSpec } from '../../src/backend/target-spec.js';

t.test('the two documented spellings', async (t) => {
	t.same(parseTargetSpec('dscow:/tmp/x.dscow:/dev/vols/base'), { format: 'dscow', image: '/tmp/x.dscow', base: '/dev/vols/base' });
	t.same(parseTargetSpec('qcow2:/images/guest.qcow2'), { format: 'qcow2', image: '/images/guest.qcow2' });
});

t.test('escaped colons and backslashes, and hostile characters kept as data', async (t) => {
	t.same(parseTargetSpec('raw:/a\\:b/c\\\\d'), { format: 'raw', image: '/a:b/c\\d' });
	for (const p of ['/x y/z', '/q"uo\'te', '/semi;colon', '/$(touch pwned)', '/`id`']) {
		const spec = formatTargetSpec({ format: 'dscow', image: p, base: `${p}.base` });
		t.same(parseTargetSpec(spec), { format: 'dscow', image: p, base: `${p}.base` }, p);
	}
});

t.test('bad specs are one clear line with exit code 2', async (t) => {
	for (const [spec, why] of [
		['', /format name/],
		['/just/a/path', /format name/],
		['dscow:', /no image path/],
		['dscow:relative.img', /absolute path/],
		['dscow:/a:/b:/c', /too many/],
		['dscow:/a:', /empty base/],
		['dscow:/a\\x', /must be followed/],
		['dscow:/a\n:/b', /control characters/],
		['DSCOW:/a', /format name/],
	] as const) {
		t.throws(() => parseTargetSpec(spec), { code: 'DMU_ERR_BAD_SPEC', exitCode: 2, message: why }, JSON.stringify(spec));
	}
});
