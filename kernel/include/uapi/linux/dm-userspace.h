/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dm-userspace: a device-mapper target that asks a userspace daemon where
 * each block of a virtual disk lives, remembers the answer, and from then on
 * remaps bios like dm-linear without leaving the kernel.
 *
 * This header is the single source of truth for the kernel/daemon ABI. The
 * TypeScript mirror lives in src/abi/ and is checked against golden byte
 * vectors produced from this file (test/abi/).
 *
 * Transport
 * ---------
 * Every "userspace" target creates a misc character device named
 * /dev/dmu/<key>, where <key> is the first table argument. The daemon opens
 * it O_RDWR (CAP_SYS_ADMIN required; a second opener gets -EBUSY while the
 * first one holds it). The stream in both directions is a sequence of
 * fixed-size struct dmu_msg records (DMU_MSG_SIZE bytes each):
 *
 *  - read() returns as many whole messages as fit in the buffer (a batch);
 *    a buffer smaller than one message is -EINVAL. It blocks until at least
 *    one message is ready, unless the file is O_NONBLOCK (-EAGAIN). It
 *    returns 0 once the target has been destroyed. DMU_MSG_ALLOCATED
 *    reports ask for nothing urgent: they become ready in batches (a few
 *    hundred, or about a tenth of a second after the first), or with any
 *    other message, which is then read after them.
 *  - write() takes a batch of whole messages; a length that is not a
 *    multiple of DMU_MSG_SIZE is -EINVAL and nothing is consumed. Messages
 *    are processed in order; the first invalid one stops the batch: the
 *    write returns the bytes consumed so far, or the error if it was the
 *    first message.
 *  - poll() reports EPOLLIN when a message is ready, EPOLLOUT always.
 *
 * The first message read after every open is DMU_MSG_FEATURES (id 0), so a
 * daemon learns what the kernel offers without version numbers. Requests the
 * previous daemon had read but not answered are queued again for the new one.
 *
 * Table line
 * ----------
 *   <start> <len> userspace <key> <block_size_sectors>
 *           [<#feature args> <arg>...] <dev0> [<dev1>...]
 *
 *   key                  [A-Za-z0-9._-], 1 to DMU_KEY_MAX bytes
 *   block_size_sectors   a power of two, 1 (512 B) to 16384 (8 MiB)
 *   feature args         daemon_timeout <seconds>   wait this long for a
 *                                                   daemon before failing
 *                                                   I/O with -EIO (default
 *                                                   60, 0 = forever)
 *                        max_mappings <n>           bound on remembered
 *                                                   mappings (default 65536)
 *   devN                 every device a mapping may point to; responses
 *                        name them by index, so a daemon can never send I/O
 *                        to a device outside the table.
 */
#ifndef _UAPI_LINUX_DM_USERSPACE_H
#define _UAPI_LINUX_DM_USERSPACE_H

#include <linux/types.h>

#define DMU_KEY_MAX		48
#define DMU_MAX_DEVS		16
#define DMU_MSG_SIZE		64

/*
 * Feature bits, reported in struct dmu_features.features. A daemon must
 * ignore bits it does not know and must not use a feature whose bit is
 * clear.
 *
 * DMU_FEATURE_COPY_FIRST: map responses may carry DMU_MAP_COPY_FIRST; the
 *	kernel copies the source block with dm-kcopyd before any queued bio
 *	is released to the destination.
 * DMU_FEATURE_TEMPORARY: DMU_MAP_TEMPORARY answers a request without
 *	remembering the mapping (the next bio asks again).
 * DMU_FEATURE_ZERO: DMU_MAP_ZERO: reads return zeros, no device involved.
 * DMU_FEATURE_ERROR: DMU_MAP_ERROR fails the bios with a given errno.
 * DMU_FEATURE_INVALIDATE: DMU_MSG_INVALIDATE forgets mappings in a range.
 * DMU_FEATURE_COMMIT: REQ_PREFLUSH and FUA writes to uncommitted mappings
 *	produce DMU_MSG_COMMIT requests.
 * DMU_FEATURE_COPY_ERROR: a failed copy-first is reported to the daemon
 *	with DMU_MSG_COPY_ERROR.
 * DMU_FEATURE_COMMIT_SEQ: the kernel numbers the DMU_MSG_MAP_REPLY
 *	messages it accepts (1, 2, ... over the target's life, across daemon
 *	restarts; struct dmu_features.reply_seq is the last number given
 *	out), and each DMU_MSG_COMMIT says up to which reply its device flush
 *	covers (struct dmu_commit.covered_seq): every reply numbered up to it
 *	had its mapping in place, copy-first done, before the flush began. A
 *	daemon commits the allocations of those replies and no later ones:
 *	a later one's copy-first may not be on disk yet.
 * DMU_FEATURE_MAP_RUN: a map reply may answer for a run of blocks
 *	(struct dmu_map_reply.run, at most struct dmu_features.max_run):
 *	block + i lives at sector + i * block_sectors on the same device,
 *	with the same flags. Only for remembered answers (not TEMPORARY,
 *	ERROR or COPY_FIRST). The kernel remembers the extra blocks only
 *	while it has room (they never evict a mapping) and up to the first
 *	one that already has a mapping or a request in flight; so a daemon
 *	must not put in a run a block it has answered differently before,
 *	and a block it is still answering keeps that answer.
 * DMU_FEATURE_COW: a map reply may carry DMU_MAP_COW (alone, and with a
 *	run): the block reads from (src_dev, src_sector) until its first
 *	write. That write makes the kernel itself copy the block to (dev,
 *	sector) with dm-kcopyd (no copy when the write covers the whole
 *	block), remember (dev, sector) writable, and tell the daemon with
 *	DMU_MSG_ALLOCATED. Allocations are numbered 1, 2, ... over the
 *	target's life (struct dmu_allocated.alloc_seq; the last one given
 *	out is struct dmu_features.alloc_seq), apart from replies;
 *	a DMU_MSG_COMMIT covers those up to struct dmu_commit.covered_alloc
 *	(their copies were done before the flush began). An ALLOCATED is a
 *	request: the daemon records the allocation, then answers
 *	DMU_MSG_ALLOCATED_ACK with its id; a daemon that closes the device
 *	before that leaves it to be sent again to the next one. Messages stay
 *	in order: a daemon must apply an ALLOCATED before it answers anything
 *	read after it (a MAP for the same block, a COMMIT covering it).
 */
#define DMU_FEATURE_COPY_FIRST	(1ULL << 0)
#define DMU_FEATURE_TEMPORARY	(1ULL << 1)
#define DMU_FEATURE_ZERO	(1ULL << 2)
#define DMU_FEATURE_ERROR	(1ULL << 3)
#define DMU_FEATURE_INVALIDATE	(1ULL << 4)
#define DMU_FEATURE_COMMIT	(1ULL << 5)
#define DMU_FEATURE_COPY_ERROR	(1ULL << 6)
#define DMU_FEATURE_COMMIT_SEQ	(1ULL << 7)
#define DMU_FEATURE_MAP_RUN	(1ULL << 8)
#define DMU_FEATURE_COW		(1ULL << 9)

/*
 * Message types. Types below 0x80 travel kernel -> daemon (read()), types
 * from 0x80 travel daemon -> kernel (write()).
 */
enum dmu_msg_type {
	/* kernel -> daemon */
	DMU_MSG_FEATURES	= 0x01,	/* payload: struct dmu_features */
	DMU_MSG_MAP		= 0x02,	/* payload: struct dmu_map_request */
	DMU_MSG_COMMIT		= 0x03,	/* payload: struct dmu_commit */
	DMU_MSG_INVALIDATE_DONE	= 0x04,	/* payload: struct dmu_invalidate */
	DMU_MSG_COPY_ERROR	= 0x05,	/* payload: struct dmu_copy_error */
	DMU_MSG_ALLOCATED	= 0x06,	/* payload: struct dmu_allocated */

	/* daemon -> kernel */
	DMU_MSG_GET_FEATURES	= 0x81,	/* payload: none (reserved, zero) */
	DMU_MSG_MAP_REPLY	= 0x82,	/* payload: struct dmu_map_reply */
	DMU_MSG_COMMIT_DONE	= 0x83,	/* payload: struct dmu_commit_done */
	DMU_MSG_INVALIDATE	= 0x84,	/* payload: struct dmu_invalidate */
	DMU_MSG_ALLOCATED_ACK	= 0x85,	/* payload: none (reserved, zero) */
};

/*
 * DMU_MSG_FEATURES, payload to userspace. Sent (id 0) as the first message
 * after each open, and in answer to DMU_MSG_GET_FEATURES (same id).
 */
struct dmu_features {
	__u64 features;		/* DMU_FEATURE_* */
	__u64 nr_blocks;	/* virtual blocks in the target */
	__u32 block_sectors;	/* block size in 512-byte sectors */
	__u32 nr_devs;		/* devices in the table, index 0..nr_devs-1 */
	__u32 max_batch;	/* most messages one read() will return */
	__u32 max_run;		/* DMU_FEATURE_MAP_RUN: most blocks a reply covers */
	__u64 reply_seq;	/* DMU_FEATURE_COMMIT_SEQ: last reply number */
	__u64 alloc_seq;	/* DMU_FEATURE_COW: last allocation number */
};

/*
 * DMU_MSG_MAP request flags (struct dmu_msg.flags).
 *
 * DMU_REQ_WRITE: the bio that caused the request is a write.
 * DMU_REQ_WHOLE_BLOCK: that write covers the whole block, so the daemon
 *	may skip copy-first.
 * DMU_REQ_RO_FAULT: the block had a read-only mapping and a write hit it.
 */
#define DMU_REQ_WRITE		(1U << 0)
#define DMU_REQ_WHOLE_BLOCK	(1U << 1)
#define DMU_REQ_RO_FAULT	(1U << 2)

/* DMU_MSG_MAP, payload to userspace: "where does this block live?" */
struct dmu_map_request {
	__u64 block;		/* virtual block number */
	__u64 reserved[5];
};

/*
 * DMU_MSG_MAP_REPLY flags (struct dmu_msg.flags).
 *
 * DMU_MAP_WRITABLE: writes may use the mapping; without it the mapping is
 *	read-only and a write faults back to the daemon (DMU_REQ_RO_FAULT).
 * DMU_MAP_COPY_FIRST: before releasing any bio, copy one block from
 *	(src_dev, src_sector) to (dev, sector) with dm-kcopyd.
 * DMU_MAP_TEMPORARY: serve the waiting bios, do not remember the mapping.
 * DMU_MAP_ZERO: reads return zeros; dev and sector are ignored. Writes to
 *	a zero mapping fault back to the daemon (it is never writable).
 * DMU_MAP_ERROR: fail the waiting bios with -error; nothing is remembered.
 * DMU_MAP_DURABLE: the daemon's metadata for this mapping is already
 *	durable, so a FUA write to it need not wait for a commit.
 * DMU_MAP_COW: reads use (src_dev, src_sector); the first write allocates
 *	(dev, sector) in the kernel (DMU_FEATURE_COW).
 */
#define DMU_MAP_WRITABLE	(1U << 0)
#define DMU_MAP_COPY_FIRST	(1U << 1)
#define DMU_MAP_TEMPORARY	(1U << 2)
#define DMU_MAP_ZERO		(1U << 3)
#define DMU_MAP_ERROR		(1U << 4)
#define DMU_MAP_DURABLE		(1U << 5)
#define DMU_MAP_COW		(1U << 6)
#define DMU_MAP_FLAGS_ALL	0x7fU

/*
 * DMU_MSG_MAP_REPLY, payload to kernel. The id is that of the request.
 * sector (and src_sector) are in 512-byte units on the named device and
 * must leave room for a whole block before the end of the device.
 */
struct dmu_map_reply {
	__u64 block;		/* must equal the request's block */
	__u64 sector;		/* destination start sector on dev */
	__u64 src_sector;	/* copy-first (or COW) source start sector */
	__u32 dev;		/* destination device index */
	__u32 src_dev;		/* copy-first (or COW) source device index */
	__s32 error;		/* DMU_MAP_ERROR: positive errno */
	__u32 run;		/* DMU_FEATURE_MAP_RUN: blocks answered, 0 = 1 */
	__u64 reserved1;
};

/*
 * DMU_MSG_COMMIT, payload to userspace. The kernel has flushed every data
 * device; the daemon must make durable the metadata of the mappings it
 * gave in replies numbered up to covered_seq (DMU_FEATURE_COMMIT_SEQ) and
 * answer with DMU_MSG_COMMIT_DONE carrying the same id.
 */
struct dmu_commit {
	__u64 covered_seq;	/* replies 1..covered_seq are covered */
	__u64 covered_alloc;	/* DMU_FEATURE_COW: allocations 1..covered_alloc */
	__u64 reserved[4];
};

/*
 * DMU_MSG_COMMIT_DONE, payload to kernel.
 */
struct dmu_commit_done {
	__s32 error;		/* 0, or a positive errno failing the flush */
	__u32 reserved0;
	__u64 reserved[5];
};

/*
 * DMU_MSG_INVALIDATE, payload to kernel: forget the mappings of blocks
 * [block, block + count), but allocations the daemon has not acknowledged
 * yet (DMU_FEATURE_COW). Bios in flight to them finish first. Answered by
 * DMU_MSG_INVALIDATE_DONE (payload to userspace, same id and range) once no
 * bio uses a forgotten mapping any more.
 */
struct dmu_invalidate {
	__u64 block;
	__u64 count;
	__s32 error;		/* in INVALIDATE_DONE: 0 or positive errno */
	__u32 reserved0;
	__u64 reserved[3];
};

/*
 * DMU_MSG_COPY_ERROR, payload to userspace: a copy-first for the mapping
 * answered by request id failed; its waiting bios were failed with -EIO and
 * nothing was remembered.
 */
struct dmu_copy_error {
	__u64 block;
	__s32 error;		/* positive errno */
	__u32 reserved0;
	__u64 reserved[4];
};

/*
 * DMU_MSG_ALLOCATED, payload to userspace: writes to DMU_MAP_COW mappings
 * made the kernel allocate @count neighbouring blocks: block + i at
 * (dev, sector + i * block_sectors), allocation number alloc_seq + i.
 * They are remembered writable and not durable. The kernel grows a
 * report still waiting to be read when the next allocation follows on in
 * all three (a sequential first write is then one report per read, not
 * one per block). Answered by DMU_MSG_ALLOCATED_ACK with the same id once
 * the daemon has recorded every block of it.
 */
struct dmu_allocated {
	__u64 block;		/* the first block */
	__u64 sector;		/* where the first block lives now */
	__u64 alloc_seq;	/* number of the first block's allocation */
	__u32 dev;
	__u32 count;		/* blocks, at least 1 */
	__u64 reserved[2];
};

/*
 * One message, both directions. Reserved fields must be zero when written
 * by the daemon (the kernel rejects a message with non-zero reserved
 * fields, -EINVAL, so they can gain meaning later behind a feature bit).
 */
struct dmu_msg {
	__u32 type;		/* enum dmu_msg_type */
	__u32 flags;		/* DMU_REQ_* or DMU_MAP_*, per type */
	__u64 id;		/* request id, echoed by the answer */
	union {
		struct dmu_features features;
		struct dmu_map_request map;
		struct dmu_map_reply reply;
		struct dmu_commit commit_req;
		struct dmu_commit_done commit;
		struct dmu_invalidate invalidate;
		struct dmu_copy_error copy_error;
		struct dmu_allocated allocated;
		__u8 payload[48];
	};
};

#endif /* _UAPI_LINUX_DM_USERSPACE_H */
