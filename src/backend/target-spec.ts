/**
 * The disk target string an admin writes after `dmu:` (or in `target=`):
 *
 *   <format>:<image>[:<base>]        dscow:/var/x.dscow:/dev/vols/base
 *                                     qcow2:/images/guest.qcow2
 *
 * Colons and backslashes inside a path are escaped with a backslash
 * (`\:` and `\\`); nothing else is special, so spaces and quotes pass
 * through as they are. The string is data: it is never given to a shell.
 */
import { DmuError } from '../errors.js';

export interface TargetSpec {
	format: string;
	image: string;
	base?: string;
}

const FORMAT = /^[a-z][a-z0-9_-]{0,31}$/;

function bad(spec: string, why: string): DmuError {
	return new DmuError('DMU_ERR_BAD_SPEC', `bad disk spec ${JSON.stringify(spec)}: ${why} (expected <format>:<image>[:<base>], e.g. dscow:/var/x.dscow:/dev/vols/base)`, 2);
}

/** Split on unescaped colons, undoing the escapes. */
function splitEscaped(spec: string): string[] {
	const parts: string[] = [];
	let cur = '';
	for (let i = 0; i < spec.length; i++) {
		const c = spec[i];
		if (c === '\\') {
			const next = spec[i + 1];
			if (next !== ':' && next !== '\\') throw bad(spec, `"\\" must be followed by ":" or "\\" (at offset ${i})`);
			cur += next;
			i++;
		} else if (c === ':') {
			parts.push(cur);
			cur = '';
		} else {
			cur += c;
		}
	}
	parts.push(cur);
	return parts;
}

export function parseTargetSpec(spec: string): TargetSpec {
	if (/[\0\n\r]/.test(spec)) throw bad(spec, 'control characters are not allowed');
	const parts = splitEscaped(spec.trim());
	const [format, image, base, ...rest] = parts;
	if (!format || !FORMAT.test(format)) throw bad(spec, `"${format ?? ''}" is not a format name`);
	if (!image) throw bad(spec, 'no image path');
	if (rest.length) throw bad(spec, 'too many ":"-separated fields (escape colons in paths as "\\:")');
	if (base === '') throw bad(spec, 'empty base path');
	for (const p of [image, base]) {
		if (p !== undefined && !p.startsWith('/')) throw bad(spec, `"${p}" is not an absolute path`);
	}
	return base === undefined ? { format, image } : { format, image, base };
}

const escapePath = (p: string) => p.replace(/\\/g, '\\\\').replace(/:/g, '\\:');

export function formatTargetSpec(t: TargetSpec): string {
	return [t.format, escapePath(t.image), ...(t.base ? [escapePath(t.base)] : [])].join(':');
}
