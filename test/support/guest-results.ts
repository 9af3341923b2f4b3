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
	ok(v: boolean, msg: string, extra: { todo: string }): void;
	equal(a: unknown, b: unknown, msg: string): void;
}

/** `check` lines of a script (at the start of a line, after indentation). */
export const countChecks = (script: string): number =>
	fs
		.readFileSync(script, 'utf8')
		.split('\n')
		.filter((l) => /^\s*check /.test(l)).length;

/**
 * `knownBugs` maps a check-name prefix to the bug that makes it fail: such
 * checks are reported as tap TODOs (shown, not counted) until it is fixed.
 */
export function assertGuestResults(t: TapLike, outDir: string, expected: number, knownBugs: Record<string, string> = {}): void {
	const res = path.join(outDir, 'results.txt');
	const lines = fs.existsSync(res) ? fs.readFileSync(res, 'utf8').split('\n').filter(Boolean) : [];
	for (const line of lines) {
		const m = /^(not ok|ok) - (.*)$/.exec(line);
		const bug = m && Object.entries(knownBugs).find(([prefix]) => m[2]!.startsWith(prefix))?.[1];
		if (m && bug) t.ok(m[1] === 'ok', m[2]!, { todo: bug });
		else if (m?.[1] === 'ok') t.pass(m[2]!);
		else if (m) t.fail(line);
	}
	t.equal(lines.length, expected, 'every check ran');
}
