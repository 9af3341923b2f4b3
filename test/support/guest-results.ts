/**
 * Results of a guest scenario script that used test/vm/lib/checks.sh (or
 * the same line format): every "ok - NAME" / "not ok - NAME # why" line in
 * $DMU_OUT/results.txt becomes an assertion, and the number of lines must
 * match the checks the script has, so a script that dies half-way fails.
 */
import fs from 'node:fs';
import path from 'node:path';

interface TapLike {
	pass(msg: string): void;
	fail(msg: string): void;
	equal(a: unknown, b: unknown, msg: string): void;
}

/** `check` lines of a script (at the start of a line, after indentation). */
export const countChecks = (script: string): number =>
	fs
		.readFileSync(script, 'utf8')
		.split('\n')
		.filter((l) => /^\s*check /.test(l)).length;

export function assertGuestResults(t: TapLike, outDir: string, expected: number): void {
	const res = path.join(outDir, 'results.txt');
	const lines = fs.existsSync(res) ? fs.readFileSync(res, 'utf8').split('\n').filter(Boolean) : [];
	for (const line of lines) {
		const m = /^(not ok|ok) - (.*)$/.exec(line);
		if (m?.[1] === 'ok') t.pass(m[2]!);
		else if (m) t.fail(line);
	}
	t.equal(lines.length, expected, 'every check ran');
}
