/**
 * The TypeScript ABI mirror against the C header, through golden vectors.
 *
 * test/abi/golden.c is compiled with the host gcc against the uapi header
 * (its static assertions fail the build on a layout change), run, and its
 * output compared with the checked-in test/abi/golden.txt. The same output
 * is then checked against src/abi: every constant, struct size and member
 * offset, and the bytes of one message of each type encoded from the same
 * values as the C program uses.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t from 'tap';
import { decodeMessage, encodeMessage } from '../../src/abi/codec.js';
import {
	DMU_KEY_MAX,
	DMU_MAP_FLAGS_ALL,
	DMU_MAX_DEVS,
	DMU_MSG_SIZE,
	Feature,
	MapFlag,
	MsgHeader,
	MsgType,
	Payload,
	ReqFlag,
	type StructSpec,
} from '../../src/abi/constants.js';
import { GOLDEN_MESSAGES } from '../abi/golden-values.js';

const run = promisify(execFile);
const root = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const src = join(root, 'test/abi/golden.c');
const bin = join(root, '.cache/abi/golden');
const include = join(root, 'kernel/include/uapi');

/** Every C constant the program prints, as the TS mirror has it. */
const TS_CONSTANTS: Record<string, bigint> = {
	DMU_KEY_MAX: BigInt(DMU_KEY_MAX),
	DMU_MAX_DEVS: BigInt(DMU_MAX_DEVS),
	DMU_MSG_SIZE: BigInt(DMU_MSG_SIZE),
	DMU_MAP_FLAGS_ALL: BigInt(DMU_MAP_FLAGS_ALL),
};
for (const [k, v] of Object.entries(Feature)) TS_CONSTANTS[`DMU_FEATURE_${k}`] = v;
for (const [k, v] of Object.entries(MsgType)) TS_CONSTANTS[`DMU_MSG_${k}`] = BigInt(v);
for (const [k, v] of Object.entries(ReqFlag)) TS_CONSTANTS[`DMU_REQ_${k}`] = BigInt(v);
for (const [k, v] of Object.entries(MapFlag)) TS_CONSTANTS[`DMU_MAP_${k}`] = BigInt(v);

const STRUCTS: StructSpec[] = [MsgHeader, ...Object.values(Payload)];

interface Golden {
	consts: Map<string, bigint>;
	sizes: Map<string, number>;
	/** "struct.member" -> [offset, size] */
	fields: Map<string, [number, number]>;
	msgs: Map<string, string>;
}

function parse(text: string): Golden {
	const g: Golden = { consts: new Map(), sizes: new Map(), fields: new Map(), msgs: new Map() };
	for (const line of text.split('\n')) {
		const [kind, name, a, b] = line.split(' ');
		if (!kind || !name || a === undefined) continue;
		if (kind === 'const') g.consts.set(name, BigInt(a));
		else if (kind === 'size') g.sizes.set(name, Number(a));
		else if (kind === 'field') g.fields.set(name, [Number(a), Number(b)]);
		else if (kind === 'msg') g.msgs.set(name, a);
	}
	return g;
}

t.test('golden.c builds against the uapi header and matches golden.txt', async (t) => {
	await mkdir(dirname(bin), { recursive: true });
	await run('gcc', ['-std=c11', '-Wall', '-Wextra', '-Werror', '-I', include, '-o', bin, src]);
	const { stdout } = await run(bin);
	const expected = await readFile(join(root, 'test/abi/golden.txt'), 'utf8');
	t.equal(stdout, expected, 'C output is byte-for-byte the checked-in golden.txt');
});

t.test('the layout is the same for i386 (no hidden padding)', async (t) => {
	const { stdout: multiarch } = await run('gcc', ['-print-multiarch']);
	// asm/types.h is the same for both ABIs; only the static assertions are compiled.
	await run('gcc', [
		'-m32',
		'-std=c11',
		'-Wall',
		'-Werror',
		'-fsyntax-only',
		'-DGOLDEN_ASSERTS_ONLY',
		'-I',
		include,
		'-I',
		join('/usr/include', multiarch.trim()),
		src,
	]);
	t.pass('golden.c static assertions hold with -m32');
});

t.test('TS constants, sizes and offsets equal the C ones', async (t) => {
	const g = parse(await readFile(join(root, 'test/abi/golden.txt'), 'utf8'));
	t.ok(g.consts.size > 0 && g.fields.size > 0, 'golden.txt has content');

	for (const [name, value] of g.consts) t.equal(TS_CONSTANTS[name], value, `const ${name}`);
	for (const name of Object.keys(TS_CONSTANTS)) t.ok(g.consts.has(name), `${name} exists in C`);

	for (const s of STRUCTS) {
		t.equal(s.size, g.sizes.get(s.struct), `sizeof(struct ${s.struct})`);
		for (const f of s.fields) {
			t.same(g.fields.get(`${s.struct}.${f.c}`), [f.offset, f.size], `${s.struct}.${f.c} offset, size`);
		}
		// Fields (reserved included) tile the struct: no gap, no overlap.
		const sorted = [...s.fields].sort((a, b) => a.offset - b.offset);
		let end = 0;
		for (const f of sorted) {
			t.equal(f.offset, end, `${s.struct}.${f.c} starts where the previous field ends`);
			end = f.offset + f.size;
		}
		if (s !== MsgHeader) t.equal(end, s.size, `${s.struct} fields cover the struct`);
	}
	// Every C member is known to the mirror; union members sit on the payload.
	for (const [name, [offset, size]] of g.fields) {
		const [struct, member] = name.split('.');
		const s = STRUCTS.find((x) => x.struct === struct);
		t.ok(s, `struct ${struct} mirrored`);
		const union = Object.values(Payload).find((p) => p.member === member);
		if (struct === 'dmu_msg' && union) {
			t.same([offset, size], [16, union.size], `dmu_msg.${member} is the 48-byte payload`);
		} else {
			t.ok(
				s?.fields.some((f) => f.c === member),
				`${name} mirrored in constants.ts`,
			);
		}
	}
});

t.test('TS encoding of the golden values equals the C bytes', async (t) => {
	const g = parse(await readFile(join(root, 'test/abi/golden.txt'), 'utf8'));
	t.equal(g.msgs.size, Object.keys(MsgType).length, 'one vector per message type');
	for (const [name, msg] of Object.entries(GOLDEN_MESSAGES)) {
		const hex = g.msgs.get(name);
		t.ok(hex, `vector for ${name}`);
		t.equal(encodeMessage(msg).toString('hex'), hex, `encode ${name}`);
		t.same(decodeMessage(Buffer.from(hex ?? '', 'hex')), msg, `decode ${name}`);
	}
});
