/**
 * Pure encode/decode of dm-userspace messages and batches. Driven by the
 * layout tables in constants.ts, so the byte positions live in one place
 * (checked against the C header by the golden test).
 *
 * Encode writes every reserved byte as zero. Decode rejects unknown types
 * and, by default, non-zero reserved bytes: they can only gain meaning
 * behind a feature bit this code does not know, and the kernel applies the
 * same rule to what we write.
 */
import { AbiError, AbiErrorCode } from './abi-error.js';
import {
	DMU_HEADER_SIZE,
	DMU_MSG_SIZE,
	DMU_MSG_TO_KERNEL,
	type FieldSpec,
	MsgHeader,
	MsgType,
	type MsgTypeValue,
	Payload,
	PayloadOf,
	msgTypeName,
} from './constants.js';
import type { DmuMessage } from './messages.js';

export interface DecodeOptions {
	/** Reject non-zero reserved bytes (default true). */
	checkReserved?: boolean;
}

/** Field with its offset inside the whole 64-byte message. */
interface WireField extends FieldSpec {
	readonly at: number;
}

/**
 * A type's fields, absolute offsets, split by kind: cowd encodes and
 * decodes every message through these, mostly before V8 has optimised
 * anything (and under emulation for a long time after), so the loops
 * stay flat: no per-field switch or closure.
 */
interface WireLayout {
	/** Every field in the order of the C struct (header, then payload). */
	readonly all: readonly WireField[];
	readonly u32: readonly WireField[];
	readonly s32: readonly WireField[];
	readonly u64: readonly WireField[];
	/** Reserved fields; every one is a whole number of aligned 32-bit words. */
	readonly reserved: readonly WireField[];
}

const layouts = new Map<number, WireLayout>();
for (const type of Object.values(MsgType)) {
	const header = MsgHeader.fields
		.filter((f) => f.kind !== 'reserved')
		.map((f) => ({ ...f, at: f.offset }));
	const payloadName = PayloadOf[type];
	const payload: readonly FieldSpec[] = payloadName
		? Payload[payloadName].fields
		: MsgHeader.fields.filter((f) => f.kind === 'reserved');
	const all: WireField[] = [...header, ...payload.map((f) => ({ ...f, at: payloadName ? DMU_HEADER_SIZE + f.offset : f.offset }))];
	const kind = (k: FieldSpec['kind']) => all.filter((f) => f.kind === k);
	const reserved = kind('reserved');
	if (reserved.some((f) => f.at % 4 !== 0 || f.size % 4 !== 0)) throw new Error(`${msgTypeName(type)}: a reserved field is not whole 32-bit words`);
	layouts.set(type, { all, u32: kind('u32'), s32: kind('s32'), u64: kind('u64'), reserved });
}

const U32_MAX = 0xffff_ffff;
const S32_MIN = -0x8000_0000;
const S32_MAX = 0x7fff_ffff;
const U64_MAX = (1n << 64n) - 1n;

function layoutOf(type: number, index: number, offset: number): WireLayout {
	const layout = layouts.get(type);
	if (!layout) {
		throw new AbiError(
			AbiErrorCode.TYPE,
			`unknown dm-userspace message type 0x${type.toString(16)} (message ${index})`,
			index,
			offset,
		);
	}
	return layout;
}

/** A DataView over a Buffer: its u64 accessors are engine built-ins, Buffer's are not. */
const viewOf = (buf: Buffer) => new DataView(buf.buffer, buf.byteOffset, buf.byteLength);

/**
 * Encode one message into `buf` at `offset` (a fresh 64-byte buffer by
 * default). Throws AbiError on an unknown type or an out-of-range field.
 */
export function encodeMessage(msg: DmuMessage, buf = Buffer.alloc(DMU_MSG_SIZE), offset = 0, index = 0): Buffer {
	encodeInto(msg, buf, viewOf(buf), offset, index, false);
	return buf;
}

function fieldError(msg: DmuMessage, f: WireField, index: number, at: number, why: string): AbiError {
	return new AbiError(AbiErrorCode.FIELD, `${msgTypeName(msg.type)}.${f.name}: ${why} (message ${index})`, index, at);
}

/**
 * The encoder. cowd encodes every answer with it, so it stays lean: the
 * message name is only looked up for an error, u64s go through the
 * DataView, and reserved bytes of a buffer known to be zeroed are left.
 */
function encodeInto(msg: DmuMessage, buf: Buffer, view: DataView, offset: number, index: number, zeroed: boolean): void {
	const layout = layoutOf(msg.type, index, offset);
	const values = msg as unknown as Record<string, unknown>;
	for (const f of layout.u64) {
		const v = values[f.name];
		if (typeof v !== 'bigint') throw fieldError(msg, f, index, offset + f.at, `expected a bigint, got ${typeof v}`);
		if (v < 0n || v > U64_MAX) throw fieldError(msg, f, index, offset + f.at, `${v} does not fit in u64`);
		view.setBigUint64(offset + f.at, v, true);
	}
	for (const f of layout.u32) {
		const v = values[f.name];
		if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > U32_MAX) {
			throw fieldError(msg, f, index, offset + f.at, typeof v === 'number' && Number.isInteger(v) ? `${v} does not fit in u32` : `expected an integer, got ${String(v)}`);
		}
		view.setUint32(offset + f.at, v, true);
	}
	for (const f of layout.s32) {
		const v = values[f.name];
		if (typeof v !== 'number' || !Number.isInteger(v) || v < S32_MIN || v > S32_MAX) {
			throw fieldError(msg, f, index, offset + f.at, typeof v === 'number' && Number.isInteger(v) ? `${v} does not fit in s32` : `expected an integer, got ${String(v)}`);
		}
		view.setInt32(offset + f.at, v, true);
	}
	if (!zeroed) for (const f of layout.reserved) buf.fill(0, offset + f.at, offset + f.at + f.size);
}

/** Decode the 64-byte message at `offset`. */
export function decodeMessage(buf: Buffer, offset = 0, opts: DecodeOptions = {}, index = 0): DmuMessage {
	return decodeFrom(buf, viewOf(buf), offset, opts.checkReserved ?? true, index);
}

function decodeFrom(buf: Buffer, view: DataView, offset: number, checkReserved: boolean, index: number): DmuMessage {
	if (buf.length - offset < DMU_MSG_SIZE) {
		throw new AbiError(
			AbiErrorCode.LENGTH,
			`truncated dm-userspace message: ${buf.length - offset} bytes, need ${DMU_MSG_SIZE}`,
			index,
			offset,
		);
	}
	const type = view.getUint32(offset, true);
	const layout = layoutOf(type, index, offset);
	if (checkReserved) {
		for (const f of layout.reserved) {
			// A word at a time; the byte is only looked for to name it.
			for (let at = offset + f.at; at < offset + f.at + f.size; at += 4) {
				if (view.getUint32(at, true) !== 0) throw reservedError(buf, type, f, index, offset, at);
			}
		}
	}
	// Fields in the C struct's order: every message of a type gets one shape.
	const out: Record<string, number | bigint> = {};
	for (const f of layout.all) {
		const at = offset + f.at;
		if (f.kind === 'u32') out[f.name] = view.getUint32(at, true);
		else if (f.kind === 'u64') out[f.name] = view.getBigUint64(at, true);
		else if (f.kind === 's32') out[f.name] = view.getInt32(at, true);
	}
	return out as unknown as DmuMessage;
}

function reservedError(buf: Buffer, type: number, f: WireField, index: number, offset: number, word: number): AbiError {
	let i = word;
	while (buf[i] === 0) i++;
	return new AbiError(
		AbiErrorCode.RESERVED,
		`${msgTypeName(type)}: reserved field ${f.c} is not zero (message ${index}, byte ${i - offset})`,
		index,
		i,
	);
}

/** Encode a batch: the messages back to back, msgs.length * 64 bytes. */
export function encodeBatch(msgs: readonly DmuMessage[]): Buffer {
	const buf = Buffer.alloc(msgs.length * DMU_MSG_SIZE);
	const view = viewOf(buf);
	for (let i = 0; i < msgs.length; i++) encodeInto(msgs[i]!, buf, view, i * DMU_MSG_SIZE, i, true);
	return buf;
}

/**
 * Decode a batch as read() returns it. Throws AbiError when the length is
 * not a multiple of 64 bytes, or on the first unknown type / non-zero
 * reserved field (AbiError.index says which message).
 */
export function decodeBatch(buf: Buffer, opts: DecodeOptions = {}): DmuMessage[] {
	if (buf.length % DMU_MSG_SIZE !== 0) {
		throw new AbiError(
			AbiErrorCode.LENGTH,
			`dm-userspace batch of ${buf.length} bytes is not a multiple of ${DMU_MSG_SIZE}`,
			Math.floor(buf.length / DMU_MSG_SIZE),
			buf.length - (buf.length % DMU_MSG_SIZE),
		);
	}
	const msgs: DmuMessage[] = [];
	const view = viewOf(buf);
	const checkReserved = opts.checkReserved ?? true;
	for (let i = 0; i * DMU_MSG_SIZE < buf.length; i++) {
		msgs.push(decodeFrom(buf, view, i * DMU_MSG_SIZE, checkReserved, i));
	}
	return msgs;
}

/** True for types the kernel sends (read()), false for types it accepts. */
export function isKernelType(type: MsgTypeValue): boolean {
	return type < DMU_MSG_TO_KERNEL;
}
