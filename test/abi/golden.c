// SPDX-License-Identifier: GPL-2.0
/*
 * Golden vectors for the dm-userspace ABI, produced from the uapi header
 * itself. The build fails if a size or offset differs from what the
 * TypeScript mirror (src/abi/constants.ts) was written for; at run time the
 * program prints every constant, every struct size and member offset, and
 * one message of each type filled with distinctive values, as hex.
 * test/abi/golden.txt is the checked-in output; test/unit/abi-golden.test.ts
 * rebuilds this, compares, and encodes the same values in TypeScript.
 *
 *   gcc -std=c11 -Wall -Wextra -Werror -I kernel/include/uapi \
 *       -o .cache/abi/golden test/abi/golden.c && .cache/abi/golden
 *
 * With -DGOLDEN_ASSERTS_ONLY only the static assertions are compiled, so
 * the layout can also be checked for i386 without a 32-bit libc:
 *   gcc -m32 -fsyntax-only -DGOLDEN_ASSERTS_ONLY -I kernel/include/uapi \
 *       -I /usr/include/x86_64-linux-gnu test/abi/golden.c
 *
 * Output lines:
 *   const <NAME> <value in hex>
 *   size <struct> <bytes>
 *   field <struct>.<member> <offset> <size>
 *   msg <TYPE> <64 bytes as hex>
 */
#include <stddef.h>
#include <linux/dm-userspace.h>

#define MEMBER_SIZE(type, member) sizeof(((type *)0)->member)

#define CHECK_FIELD(s, m, off, sz)					\
	_Static_assert(offsetof(struct s, m) == (off), #s "." #m " offset"); \
	_Static_assert(MEMBER_SIZE(struct s, m) == (sz), #s "." #m " size")

/* What src/abi/constants.ts assumes. */
_Static_assert(sizeof(struct dmu_msg) == DMU_MSG_SIZE, "dmu_msg size");
_Static_assert(DMU_MSG_SIZE == 64, "DMU_MSG_SIZE");
CHECK_FIELD(dmu_msg, type, 0, 4);
CHECK_FIELD(dmu_msg, flags, 4, 4);
CHECK_FIELD(dmu_msg, id, 8, 8);
CHECK_FIELD(dmu_msg, payload, 16, 48);
CHECK_FIELD(dmu_msg, features, 16, 48);
CHECK_FIELD(dmu_msg, map, 16, 48);
CHECK_FIELD(dmu_msg, reply, 16, 48);
CHECK_FIELD(dmu_msg, commit_req, 16, 48);
CHECK_FIELD(dmu_msg, commit, 16, 48);
CHECK_FIELD(dmu_msg, invalidate, 16, 48);
CHECK_FIELD(dmu_msg, copy_error, 16, 48);
CHECK_FIELD(dmu_msg, allocated, 16, 48);

CHECK_FIELD(dmu_features, features, 0, 8);
CHECK_FIELD(dmu_features, nr_blocks, 8, 8);
CHECK_FIELD(dmu_features, block_sectors, 16, 4);
CHECK_FIELD(dmu_features, nr_devs, 20, 4);
CHECK_FIELD(dmu_features, max_batch, 24, 4);
CHECK_FIELD(dmu_features, max_run, 28, 4);
CHECK_FIELD(dmu_features, reply_seq, 32, 8);
CHECK_FIELD(dmu_features, alloc_seq, 40, 8);

CHECK_FIELD(dmu_map_request, block, 0, 8);
CHECK_FIELD(dmu_map_request, reserved, 8, 40);

CHECK_FIELD(dmu_map_reply, block, 0, 8);
CHECK_FIELD(dmu_map_reply, sector, 8, 8);
CHECK_FIELD(dmu_map_reply, src_sector, 16, 8);
CHECK_FIELD(dmu_map_reply, dev, 24, 4);
CHECK_FIELD(dmu_map_reply, src_dev, 28, 4);
CHECK_FIELD(dmu_map_reply, error, 32, 4);
CHECK_FIELD(dmu_map_reply, run, 36, 4);
CHECK_FIELD(dmu_map_reply, reserved1, 40, 8);

_Static_assert(sizeof(struct dmu_commit) == 48, "dmu_commit size");
CHECK_FIELD(dmu_commit, covered_seq, 0, 8);
CHECK_FIELD(dmu_commit, covered_alloc, 8, 8);
CHECK_FIELD(dmu_commit, reserved, 16, 32);

CHECK_FIELD(dmu_commit_done, error, 0, 4);
CHECK_FIELD(dmu_commit_done, reserved0, 4, 4);
CHECK_FIELD(dmu_commit_done, reserved, 8, 40);

CHECK_FIELD(dmu_invalidate, block, 0, 8);
CHECK_FIELD(dmu_invalidate, count, 8, 8);
CHECK_FIELD(dmu_invalidate, error, 16, 4);
CHECK_FIELD(dmu_invalidate, reserved0, 20, 4);
CHECK_FIELD(dmu_invalidate, reserved, 24, 24);

CHECK_FIELD(dmu_copy_error, block, 0, 8);
CHECK_FIELD(dmu_copy_error, error, 8, 4);
CHECK_FIELD(dmu_copy_error, reserved0, 12, 4);
CHECK_FIELD(dmu_copy_error, reserved, 16, 32);

_Static_assert(sizeof(struct dmu_allocated) == 48, "dmu_allocated size");
CHECK_FIELD(dmu_allocated, block, 0, 8);
CHECK_FIELD(dmu_allocated, sector, 8, 8);
CHECK_FIELD(dmu_allocated, alloc_seq, 16, 8);
CHECK_FIELD(dmu_allocated, dev, 24, 4);
CHECK_FIELD(dmu_allocated, count, 28, 4);
CHECK_FIELD(dmu_allocated, reserved, 32, 16);

#ifndef GOLDEN_ASSERTS_ONLY
#include <stdio.h>
#include <string.h>

#define CONST(name) printf("const %s 0x%llx\n", #name, (unsigned long long)(name))
#define SIZE(s) printf("size %s %zu\n", #s, sizeof(struct s))
#define FIELD(s, m) printf("field %s.%s %zu %zu\n", #s, #m,		\
			   offsetof(struct s, m), MEMBER_SIZE(struct s, m))

static void print_msg(const char *name, const struct dmu_msg *m)
{
	const unsigned char *p = (const unsigned char *)m;
	size_t i;

	printf("msg %s ", name);
	for (i = 0; i < sizeof(*m); i++)
		printf("%02x", p[i]);
	printf("\n");
}

int main(void)
{
	struct dmu_msg m;

	CONST(DMU_KEY_MAX);
	CONST(DMU_MAX_DEVS);
	CONST(DMU_MSG_SIZE);
	CONST(DMU_FEATURE_COPY_FIRST);
	CONST(DMU_FEATURE_TEMPORARY);
	CONST(DMU_FEATURE_ZERO);
	CONST(DMU_FEATURE_ERROR);
	CONST(DMU_FEATURE_INVALIDATE);
	CONST(DMU_FEATURE_COMMIT);
	CONST(DMU_FEATURE_COPY_ERROR);
	CONST(DMU_FEATURE_COMMIT_SEQ);
	CONST(DMU_FEATURE_MAP_RUN);
	CONST(DMU_FEATURE_COW);
	CONST(DMU_MSG_FEATURES);
	CONST(DMU_MSG_MAP);
	CONST(DMU_MSG_COMMIT);
	CONST(DMU_MSG_INVALIDATE_DONE);
	CONST(DMU_MSG_COPY_ERROR);
	CONST(DMU_MSG_ALLOCATED);
	CONST(DMU_MSG_GET_FEATURES);
	CONST(DMU_MSG_MAP_REPLY);
	CONST(DMU_MSG_COMMIT_DONE);
	CONST(DMU_MSG_INVALIDATE);
	CONST(DMU_MSG_ALLOCATED_ACK);
	CONST(DMU_REQ_WRITE);
	CONST(DMU_REQ_WHOLE_BLOCK);
	CONST(DMU_REQ_RO_FAULT);
	CONST(DMU_MAP_WRITABLE);
	CONST(DMU_MAP_COPY_FIRST);
	CONST(DMU_MAP_TEMPORARY);
	CONST(DMU_MAP_ZERO);
	CONST(DMU_MAP_ERROR);
	CONST(DMU_MAP_DURABLE);
	CONST(DMU_MAP_COW);
	CONST(DMU_MAP_FLAGS_ALL);

	SIZE(dmu_msg);
	SIZE(dmu_features);
	SIZE(dmu_map_request);
	SIZE(dmu_map_reply);
	SIZE(dmu_commit);
	SIZE(dmu_commit_done);
	SIZE(dmu_invalidate);
	SIZE(dmu_copy_error);
	SIZE(dmu_allocated);

	FIELD(dmu_msg, type);
	FIELD(dmu_msg, flags);
	FIELD(dmu_msg, id);
	FIELD(dmu_msg, payload);
	FIELD(dmu_msg, features);
	FIELD(dmu_msg, map);
	FIELD(dmu_msg, reply);
	FIELD(dmu_msg, commit_req);
	FIELD(dmu_msg, commit);
	FIELD(dmu_msg, invalidate);
	FIELD(dmu_msg, copy_error);
	FIELD(dmu_msg, allocated);
	FIELD(dmu_features, features);
	FIELD(dmu_features, nr_blocks);
	FIELD(dmu_features, block_sectors);
	FIELD(dmu_features, nr_devs);
	FIELD(dmu_features, max_batch);
	FIELD(dmu_features, max_run);
	FIELD(dmu_features, reply_seq);
	FIELD(dmu_features, alloc_seq);
	FIELD(dmu_map_request, block);
	FIELD(dmu_map_request, reserved);
	FIELD(dmu_map_reply, block);
	FIELD(dmu_map_reply, sector);
	FIELD(dmu_map_reply, src_sector);
	FIELD(dmu_map_reply, dev);
	FIELD(dmu_map_reply, src_dev);
	FIELD(dmu_map_reply, error);
	FIELD(dmu_map_reply, run);
	FIELD(dmu_map_reply, reserved1);
	FIELD(dmu_commit, covered_seq);
	FIELD(dmu_commit, covered_alloc);
	FIELD(dmu_commit, reserved);
	FIELD(dmu_commit_done, error);
	FIELD(dmu_commit_done, reserved0);
	FIELD(dmu_commit_done, reserved);
	FIELD(dmu_invalidate, block);
	FIELD(dmu_invalidate, count);
	FIELD(dmu_invalidate, error);
	FIELD(dmu_invalidate, reserved0);
	FIELD(dmu_invalidate, reserved);
	FIELD(dmu_copy_error, block);
	FIELD(dmu_copy_error, error);
	FIELD(dmu_copy_error, reserved0);
	FIELD(dmu_copy_error, reserved);
	FIELD(dmu_allocated, block);
	FIELD(dmu_allocated, sector);
	FIELD(dmu_allocated, alloc_seq);
	FIELD(dmu_allocated, dev);
	FIELD(dmu_allocated, count);
	FIELD(dmu_allocated, reserved);

	/*
	 * One message of each type. Every field gets a value whose bytes are
	 * all different, so a field at the wrong offset or of the wrong width
	 * shows in the hex. Same values as GOLDEN_MESSAGES in
	 * test/unit/abi-golden.test.ts.
	 */
	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_FEATURES;
	m.id = 0;
	m.features.features = 0xff;
	m.features.nr_blocks = 0x0000000102030405ULL;
	m.features.block_sectors = 0x80;
	m.features.nr_devs = 3;
	m.features.max_batch = 0x100;
	m.features.max_run = 0x1000;
	m.features.reply_seq = 0x0000000a0b0c0d0eULL;
	m.features.alloc_seq = 0x0000000f10111213ULL;
	print_msg("FEATURES", &m);

	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_MAP;
	m.flags = DMU_REQ_WRITE | DMU_REQ_WHOLE_BLOCK;
	m.id = 0x0102030405060708ULL;
	m.map.block = 0x1112131415161718ULL;
	print_msg("MAP", &m);

	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_COMMIT;
	m.id = 0x2122232425262728ULL;
	m.commit_req.covered_seq = 0x000000002a2b2c2dULL;
	m.commit_req.covered_alloc = 0x000000002e2f3031ULL;
	print_msg("COMMIT", &m);

	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_INVALIDATE_DONE;
	m.id = 0x3132333435363738ULL;
	m.invalidate.block = 0x0000000000003a3bULL;
	m.invalidate.count = 0x0000000000003c3dULL;
	m.invalidate.error = 28;	/* ENOSPC */
	print_msg("INVALIDATE_DONE", &m);

	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_COPY_ERROR;
	m.id = 0x4142434445464748ULL;
	m.copy_error.block = 0x0000000000004a4bULL;
	m.copy_error.error = 5;		/* EIO */
	print_msg("COPY_ERROR", &m);

	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_GET_FEATURES;
	m.id = 0x5152535455565758ULL;
	print_msg("GET_FEATURES", &m);

	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_MAP_REPLY;
	m.flags = DMU_MAP_WRITABLE | DMU_MAP_COPY_FIRST | DMU_MAP_DURABLE;
	m.id = 0x6162636465666768ULL;
	m.reply.block = 0x6a6b6c6d6e6f7071ULL;
	m.reply.sector = 0x0000007273747576ULL;
	m.reply.src_sector = 0x0000007778797a7bULL;
	m.reply.dev = 1;
	m.reply.src_dev = 2;
	m.reply.error = 0x7c7d7e7f;
	m.reply.run = 0x40;
	print_msg("MAP_REPLY", &m);

	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_COMMIT_DONE;
	m.id = 0x8182838485868788ULL;
	m.commit.error = -5;		/* pins the s32 encoding */
	print_msg("COMMIT_DONE", &m);

	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_INVALIDATE;
	m.id = 0x9192939495969798ULL;
	m.invalidate.block = 0x9a9b9c9d9e9fa0a1ULL;
	m.invalidate.count = 0x00000000a2a3a4a5ULL;
	print_msg("INVALIDATE", &m);

	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_ALLOCATED;
	m.id = 0xb1b2b3b4b5b6b7b8ULL;
	m.allocated.block = 0x0000babbbcbdbebfULL;
	m.allocated.sector = 0x000000c0c1c2c3c4ULL;
	m.allocated.alloc_seq = 0x00000000c5c6c7c8ULL;
	m.allocated.dev = 1;
	m.allocated.count = 0xc9cacbcc;
	print_msg("ALLOCATED", &m);

	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_ALLOCATED_ACK;
	m.id = 0xd1d2d3d4d5d6d7d8ULL;
	print_msg("ALLOCATED_ACK", &m);
	return 0;
}
#endif /* GOLDEN_ASSERTS_ONLY */
