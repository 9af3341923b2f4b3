/**
 * Rules of the scripted test responder (test/support/responder.ts): which
 * answer each MAP request gets, and how COMMIT requests are answered.
 * Pure logic, no device: unit-tested in test/unit/abi-responder-rules.test.ts.
 *
 * Rules file (JSON); every key is optional:
 *
 *   {
 *     "rules": [                     first matching rule wins
 *       { "from": 0, "to": 99,       block range, inclusive (default: all)
 *         "op": "read",              "read" | "write" | "any" (default any);
 *                                    a write is a request with DMU_REQ_WRITE
 *         "action": "identity",      see below (default identity)
 *         "ro": false,               identity/temporary/delayed: read-only
 *                                    mapping (a write then faults back)
 *         "durable": false,          set DMU_MAP_DURABLE
 *         "dev": 0,                  destination device index
 *         "srcDev": 1,               copy-first source device index
 *         "errno": 5,                action "error": positive errno
 *         "ms": 0,                   action "delayed": delay before answering
 *         "delayMs": 0,              any action: delay before answering
 *         "times": 3 }               match only the first N requests
 *     ],
 *     "default": "identity",         action when no rule matches
 *                                    (an action name or a rule object)
 *     "commit": {
 *       "error": 0,                  errno in COMMIT_DONE (0 = durable)
 *       "delayMs": 0,                delay before answering
 *       "holdFile": "/tmp/go",       hold every COMMIT until this file exists
 *       "holdSignal": "SIGUSR1"      ... or until this signal arrives
 *     }
 *   }
 *
 * Actions (block B, block size S sectors, sector = B * S on every device):
 *   identity    map B to (dev, B*S), writable unless "ro"
 *   copy-first  copy (srcDev, B*S) to (dev, B*S) first, writable
 *   temporary   identity with DMU_MAP_TEMPORARY (not remembered)
 *   zero        DMU_MAP_ZERO (reads return zeros)
 *   error       DMU_MAP_ERROR with "errno"
 *   delayed     identity answered after "ms" milliseconds
 *   never       never answer (the request stays pending in the kernel;
 *               it is queued again for the next daemon after we exit)
 */
import { MapFlag, ReqFlag } from '../../src/abi/constants.js';
import { type MapReplyMsg, type MapRequestMsg, mapReply } from '../../src/abi/messages.js';
import { DmuError } from '../../src/errors.js';

export const ACTIONS = ['identity', 'copy-first', 'temporary', 'zero', 'error', 'delayed', 'never'] as const;
export type Action = (typeof ACTIONS)[number];

export interface Rule {
	from: bigint;
	/** Inclusive; undefined = no upper bound. */
	to: bigint | undefined;
	op: 'read' | 'write' | 'any';
	action: Action;
	ro: boolean;
	durable: boolean;
	dev: number;
	srcDev: number;
	errno: number;
	delayMs: number;
	/** Matches left (Infinity = unlimited); decremented by decide(). */
	timesLeft: number;
}

export interface CommitRule {
	error: number;
	delayMs: number;
	holdFile: string | undefined;
	holdSignal: NodeJS.Signals | undefined;
}

export interface Rules {
	rules: Rule[];
	default: Rule;
	commit: CommitRule;
}

export interface Decision {
	/** null: never answer. */
	reply: MapReplyMsg | null;
	delayMs: number;
	/** Index of the rule in "rules", or -1 for the default. */
	rule: number;
}

const RULE_KEYS = new Set(['from', 'to', 'op', 'action', 'ro', 'durable', 'dev', 'srcDev', 'errno', 'ms', 'delayMs', 'times']);
const COMMIT_KEYS = new Set(['error', 'delayMs', 'holdFile', 'holdSignal']);

function bad(where: string, why: string): DmuError {
	return new DmuError('DMU_ERR_RESPONDER_RULES', `responder rules: ${where}: ${why}`);
}

function int(v: unknown, where: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
	if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
		throw bad(where, `expected an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
	}
	return v;
}

function bool(v: unknown, where: string): boolean {
	if (typeof v !== 'boolean') throw bad(where, `expected true or false, got ${JSON.stringify(v)}`);
	return v;
}

function parseRule(raw: unknown, where: string): Rule {
	if (typeof raw === 'string') raw = { action: raw };
	if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad(where, 'expected an object');
	const r = raw as Record<string, unknown>;
	for (const k of Object.keys(r)) if (!RULE_KEYS.has(k)) throw bad(where, `unknown key "${k}"`);
	const action = (r.action ?? 'identity') as Action;
	if (!ACTIONS.includes(action)) throw bad(where, `unknown action ${JSON.stringify(r.action)} (one of ${ACTIONS.join(', ')})`);
	const op = r.op ?? 'any';
	if (op !== 'read' && op !== 'write' && op !== 'any') throw bad(where, `op must be read, write or any, got ${JSON.stringify(op)}`);
	const from = BigInt(r.from === undefined ? 0 : int(r.from, `${where}.from`, 0));
	const to = r.to === undefined ? undefined : BigInt(int(r.to, `${where}.to`, 0));
	if (to !== undefined && to < from) throw bad(where, `"to" (${to}) is below "from" (${from})`);
	if (r.ms !== undefined && action !== 'delayed') throw bad(where, '"ms" belongs to action "delayed" (use "delayMs")');
	if (r.errno !== undefined && action !== 'error') throw bad(where, '"errno" belongs to action "error"');
	return {
		from,
		to,
		op,
		action,
		ro: r.ro === undefined ? false : bool(r.ro, `${where}.ro`),
		durable: r.durable === undefined ? false : bool(r.durable, `${where}.durable`),
		dev: r.dev === undefined ? 0 : int(r.dev, `${where}.dev`, 0, 15),
		srcDev: r.srcDev === undefined ? 1 : int(r.srcDev, `${where}.srcDev`, 0, 15),
		errno: r.errno === undefined ? 5 : int(r.errno, `${where}.errno`, 1, 4095),
		delayMs:
			(r.delayMs === undefined ? 0 : int(r.delayMs, `${where}.delayMs`, 0)) +
			(action === 'delayed' ? int(r.ms ?? 0, `${where}.ms`, 0) : 0),
		timesLeft: r.times === undefined ? Number.POSITIVE_INFINITY : int(r.times, `${where}.times`, 1),
	};
}

function parseCommit(raw: unknown): CommitRule {
	const c: CommitRule = { error: 0, delayMs: 0, holdFile: undefined, holdSignal: undefined };
	if (raw === undefined) return c;
	if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('commit', 'expected an object');
	const r = raw as Record<string, unknown>;
	for (const k of Object.keys(r)) if (!COMMIT_KEYS.has(k)) throw bad('commit', `unknown key "${k}"`);
	if (r.error !== undefined) c.error = int(r.error, 'commit.error', 0, 4095);
	if (r.delayMs !== undefined) c.delayMs = int(r.delayMs, 'commit.delayMs', 0);
	if (r.holdFile !== undefined) {
		if (typeof r.holdFile !== 'string' || r.holdFile === '') throw bad('commit.holdFile', 'expected a path');
		c.holdFile = r.holdFile;
	}
	if (r.holdSignal !== undefined) {
		if (typeof r.holdSignal !== 'string' || !/^SIG[A-Z0-9]+$/.test(r.holdSignal) || r.holdSignal === 'SIGTERM') {
			throw bad('commit.holdSignal', `expected a signal name such as SIGUSR1 (not SIGTERM), got ${JSON.stringify(r.holdSignal)}`);
		}
		c.holdSignal = r.holdSignal as NodeJS.Signals;
	}
	return c;
}

/** Validate a parsed rules file. Throws DmuError with one line naming the bad key. */
export function parseRules(raw: unknown): Rules {
	if (raw === undefined || raw === null) raw = {};
	if (typeof raw !== 'object' || Array.isArray(raw)) throw bad('top level', 'expected an object');
	const r = raw as Record<string, unknown>;
	for (const k of Object.keys(r)) if (!['rules', 'default', 'commit'].includes(k)) throw bad('top level', `unknown key "${k}"`);
	if (r.rules !== undefined && !Array.isArray(r.rules)) throw bad('rules', 'expected an array');
	const rules = ((r.rules as unknown[] | undefined) ?? []).map((x, i) => parseRule(x, `rules[${i}]`));
	const def = parseRule(r.default ?? 'identity', 'default');
	if (def.from !== 0n || def.to !== undefined || def.op !== 'any' || def.timesLeft !== Number.POSITIVE_INFINITY) {
		throw bad('default', 'takes no from/to/op/times');
	}
	return { rules, default: def, commit: parseCommit(r.commit) };
}

function matches(rule: Rule, req: MapRequestMsg): boolean {
	if (rule.timesLeft <= 0) return false;
	if (req.block < rule.from || (rule.to !== undefined && req.block > rule.to)) return false;
	const write = (req.flags & ReqFlag.WRITE) !== 0;
	return rule.op === 'any' || (rule.op === 'write') === write;
}

/** The answer to one MAP request; counts the match against the rule's "times". */
export function decide(rules: Rules, req: MapRequestMsg, blockSectors: number): Decision {
	let index = rules.rules.findIndex((r) => matches(r, req));
	let rule = rules.rules[index];
	if (!rule) {
		rule = rules.default;
		index = -1;
	}
	rule.timesLeft--;
	const sector = req.block * BigInt(blockSectors);
	const durable = rule.durable ? MapFlag.DURABLE : 0;
	const base = { id: req.id, block: req.block };
	let reply: MapReplyMsg | null;
	switch (rule.action) {
		case 'identity':
		case 'delayed':
		case 'temporary':
			reply = mapReply({
				...base,
				dev: rule.dev,
				sector,
				flags:
					(rule.ro ? 0 : MapFlag.WRITABLE) | (rule.action === 'temporary' ? MapFlag.TEMPORARY : 0) | durable,
			});
			break;
		case 'copy-first':
			reply = mapReply({
				...base,
				dev: rule.dev,
				sector,
				srcDev: rule.srcDev,
				srcSector: sector,
				flags: MapFlag.WRITABLE | MapFlag.COPY_FIRST | durable,
			});
			break;
		case 'zero':
			reply = mapReply({ ...base, flags: MapFlag.ZERO | durable });
			break;
		case 'error':
			reply = mapReply({ ...base, flags: MapFlag.ERROR, error: rule.errno });
			break;
		case 'never':
			reply = null;
			break;
	}
	return { reply, delayMs: rule.delayMs, rule: index };
}
