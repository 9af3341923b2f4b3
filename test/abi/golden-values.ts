/**
 * Field values of the golden messages: the same values test/abi/golden.c
 * fills in, kept apart from the C program on purpose (an independent
 * second writing of the same vectors). Used by the golden and codec tests.
 */
import { MapFlag, MsgType, type MsgTypeName, ReqFlag } from '../../src/abi/constants.js';
import type { DmuMessage } from '../../src/abi/messages.js';

export const GOLDEN_MESSAGES = {
	FEATURES: {
		type: MsgType.FEATURES,
		flags: 0,
		id: 0n,
		features: 0xffn,
		nrBlocks: 0x0000000102030405n,
		blockSectors: 0x80,
		nrDevs: 3,
		maxBatch: 0x100,
		maxRun: 0x1000,
		replySeq: 0x0000000a0b0c0d0en,
		allocSeq: 0x0000000f10111213n,
	},
	MAP: { type: MsgType.MAP, flags: ReqFlag.WRITE | ReqFlag.WHOLE_BLOCK, id: 0x0102030405060708n, block: 0x1112131415161718n },
	COMMIT: { type: MsgType.COMMIT, flags: 0, id: 0x2122232425262728n, coveredSeq: 0x2a2b2c2dn, coveredAlloc: 0x2e2f3031n },
	INVALIDATE_DONE: {
		type: MsgType.INVALIDATE_DONE,
		flags: 0,
		id: 0x3132333435363738n,
		block: 0x3a3bn,
		count: 0x3c3dn,
		error: 28,
	},
	COPY_ERROR: { type: MsgType.COPY_ERROR, flags: 0, id: 0x4142434445464748n, block: 0x4a4bn, error: 5 },
	GET_FEATURES: { type: MsgType.GET_FEATURES, flags: 0, id: 0x5152535455565758n },
	MAP_REPLY: {
		type: MsgType.MAP_REPLY,
		flags: MapFlag.WRITABLE | MapFlag.COPY_FIRST | MapFlag.DURABLE,
		id: 0x6162636465666768n,
		block: 0x6a6b6c6d6e6f7071n,
		sector: 0x0000007273747576n,
		srcSector: 0x0000007778797a7bn,
		dev: 1,
		srcDev: 2,
		error: 0x7c7d7e7f,
		run: 0x40,
	},
	COMMIT_DONE: { type: MsgType.COMMIT_DONE, flags: 0, id: 0x8182838485868788n, error: -5 },
	INVALIDATE: {
		type: MsgType.INVALIDATE,
		flags: 0,
		id: 0x9192939495969798n,
		block: 0x9a9b9c9d9e9fa0a1n,
		count: 0xa2a3a4a5n,
		error: 0,
	},
	ALLOCATED: {
		type: MsgType.ALLOCATED,
		flags: 0,
		id: 0xb1b2b3b4b5b6b7b8n,
		block: 0xbabbbcbdbebfn,
		sector: 0xc0c1c2c3c4n,
		allocSeq: 0xc5c6c7c8n,
		dev: 1,
		count: 0xc9cacbcc,
	},
	ALLOCATED_ACK: { type: MsgType.ALLOCATED_ACK, flags: 0, id: 0xd1d2d3d4d5d6d7d8n },
} satisfies Record<MsgTypeName, DmuMessage>;
