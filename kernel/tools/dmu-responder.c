// SPDX-License-Identifier: GPL-2.0
/*
 * dmu-responder: a tiny daemon for the dm-userspace control device, for
 * debugging the kernel target without the TypeScript stack.
 *
 *   dmu-responder [-m MODE] [-l LOG] [-D MS] [-I BLOCK,COUNT] [-R N] [-x N] [-N] [-V] DEV
 *
 * Every block maps 1:1 (block * block_sectors) onto the devices. MODE:
 *   rw        writable mapping on dev 0 (default)
 *   ro        read-only on dev 0 for reads; writes and faults get writable
 *   temp      temporary writable mapping on dev 0 (never remembered)
 *   zero      reads are zero mappings; writes get writable on dev 0
 *   error=N   fail the bios with errno N
 *   copy=S    reads map read-only onto dev S (a base image); writes get a
 *             writable mapping on dev 0 with copy-first from dev S
 *   cow=S     reads and writes get DMU_MAP_COW: read from dev S until the
 *             first write, which the kernel allocates on dev 0 itself
 *             (DMU_FEATURE_COW); a write the kernel sends back as a
 *             DMU_REQ_RO_FAULT gets what copy=S gives it. Blocks known
 *             to be allocated (DMU_MSG_ALLOCATED, or copied that way)
 *             map writable on dev 0, and a run never mixes the two
 *   swap      writable on dev 0, but blocks 2k and 2k+1 trade places:
 *             neighbouring blocks are never contiguous on the device
 *   sink      read requests, never answer them
 * -l LOG    append one line per message read ("batch N", "map ID BLOCK
 *           FLAGS", "commit ID covered=SEQ alloc=SEQ", "inval_done ID BLOCK
 *           COUNT", "copy_error ID BLOCK ERR", "allocated ID BLOCK DEV SECTOR
 *           SEQ", one per block of a report, "features ...") and per check
 *           ("bad ...").
 * -D MS     wait MS milliseconds before answering each COMMIT.
 * -I B,C    send DMU_MSG_INVALIDATE for blocks [B, B+C) after opening.
 * -R N      answer for runs of up to N blocks (DMU_FEATURE_MAP_RUN) where
 *           the answer may cover a run (not temp, error or copy-first),
 *           cut at max_run and at the end of the disk.
 * -x N      first write N random messages; report how many were accepted.
 * -N        never acknowledge DMU_MSG_ALLOCATED (the kernel sends them
 *           again to the next daemon).
 * -G        after FEATURES (id 0), ask again with GET_FEATURES (id 77).
 * -V        before answering the first map request, send malformed
 *           answers to it (each must fail with EINVAL) and log the result.
 *
 * Build: cc -O2 -Wall -I kernel/include/uapi -o dmu-responder dmu-responder.c
 */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <linux/dm-userspace.h>

#define BATCH 4096

static FILE *logf;
static struct dmu_features feat;
static int fd;
static __u32 run_blocks;
static int no_ack;
/* cow= mode: one byte per block, set once the block lives on dev 0. */
static unsigned char *allocated;

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
	va_list ap;

	if (!logf)
		return;
	va_start(ap, fmt);
	vfprintf(logf, fmt, ap);
	va_end(ap);
	fputc('\n', logf);
	fflush(logf);
}

static int send_msgs(const struct dmu_msg *m, size_t n)
{
	ssize_t r = write(fd, m, n * sizeof(*m));

	if (r < 0)
		return -errno;
	return (int)(r / sizeof(*m));
}

/* Malformed answers to @req; each must be rejected with EINVAL. */
static void validate(const struct dmu_msg *req)
{
	struct dmu_msg bad[16], m;
	int i, n = 0, r;

	memset(&m, 0, sizeof(m));
	m.type = DMU_MSG_MAP_REPLY;
	m.id = req->id;
	m.flags = DMU_MAP_WRITABLE;
	m.reply.block = req->map.block;
	m.reply.sector = req->map.block * feat.block_sectors;

	bad[n] = m; bad[n++].id = req->id + 1000000;		/* unknown id */
	bad[n] = m; bad[n++].reply.block = req->map.block + 1;	/* wrong block */
	bad[n] = m; bad[n++].reply.dev = feat.nr_devs;		/* no such dev */
	bad[n] = m; bad[n++].reply.sector = ~0ULL - 1;		/* past the end */
	bad[n] = m; bad[n++].flags = 0x80000000;		/* unknown flag */
	bad[n] = m; bad[n++].reply.reserved1 = 1;		/* reserved set */
	bad[n] = m; bad[n++].type = 0x7f;			/* unknown type */
	bad[n] = m; bad[n].flags = DMU_MAP_ERROR; bad[n++].reply.error = 5000;
	bad[n] = m; bad[n++].reply.run = feat.max_run + 1;	/* run too long */
	bad[n] = m; bad[n++].reply.run = feat.nr_blocks - req->map.block + 1;	/* past the end */
	bad[n] = m; bad[n].flags |= DMU_MAP_TEMPORARY; bad[n++].reply.run = 2;	/* temporary run */
	bad[n] = m; bad[n].flags |= DMU_MAP_COPY_FIRST; bad[n++].reply.run = 2;	/* copy-first run */
	bad[n] = m; bad[n++].flags = DMU_MAP_COW | DMU_MAP_WRITABLE;	/* COW, writable */
	bad[n] = m; bad[n].flags = DMU_MAP_COW; bad[n++].reply.src_sector = ~0ULL - 1;	/* COW source past the end */
	bad[n] = m; bad[n].type = DMU_MSG_ALLOCATED_ACK; bad[n++].id = 999999;	/* ack of nothing */
	for (i = 0; i < n; i++) {
		r = send_msgs(&bad[i], 1);
		logmsg("bad %d %s", i, r == -EINVAL ? "rejected" : "ACCEPTED");
	}
	/* Truncated and oversized writes. */
	r = write(fd, &m, sizeof(m) - 1) < 0 && errno == EINVAL;
	logmsg("bad truncated %s", r ? "rejected" : "ACCEPTED");
	{
		char big[sizeof(m) + 1];

		memcpy(big, &m, sizeof(m));
		big[sizeof(m)] = 0;
		r = write(fd, big, sizeof(big)) < 0 && errno == EINVAL;
		logmsg("bad oversized %s", r ? "rejected" : "ACCEPTED");
	}
}

static void fuzz(long count)
{
	long i, accepted = 0;
	struct dmu_msg m;
	unsigned int j;

	srandom(time(NULL));
	for (i = 0; i < count; i++) {
		unsigned char *p = (unsigned char *)&m;

		for (j = 0; j < sizeof(m); j++)
			p[j] = random();
		/* Half of them with a valid type, to reach the validators. */
		if (i & 1)
			m.type = 0x81 + random() % 5;
		if (send_msgs(&m, 1) == 1)
			accepted++;
	}
	logmsg("fuzz sent=%ld accepted=%ld", count, accepted);
	printf("fuzz sent=%ld accepted=%ld\n", count, accepted);
}

static void answer_map(const struct dmu_msg *req, struct dmu_msg *rep,
		       const char *mode)
{
	int write = req->flags & (DMU_REQ_WRITE | DMU_REQ_RO_FAULT);
	__u64 sector = req->map.block * feat.block_sectors;

	memset(rep, 0, sizeof(*rep));
	rep->type = DMU_MSG_MAP_REPLY;
	rep->id = req->id;
	rep->reply.block = req->map.block;
	rep->reply.sector = sector;
	if (!strcmp(mode, "swap")) {
		rep->flags = DMU_MAP_WRITABLE;
		rep->reply.sector = (req->map.block ^ 1) * feat.block_sectors;
	} else if (!strcmp(mode, "ro")) {
		rep->flags = write ? DMU_MAP_WRITABLE : 0;
	} else if (!strcmp(mode, "temp")) {
		rep->flags = DMU_MAP_TEMPORARY | DMU_MAP_WRITABLE;
	} else if (!strcmp(mode, "zero")) {
		rep->flags = write ? DMU_MAP_WRITABLE : DMU_MAP_ZERO;
		if (!write)
			rep->reply.sector = 0;
	} else if (!strncmp(mode, "error=", 6)) {
		rep->flags = DMU_MAP_ERROR;
		rep->reply.sector = 0;
		rep->reply.error = atoi(mode + 6);
	} else if (!strncmp(mode, "cow=", 4) && allocated[req->map.block]) {
		rep->flags = DMU_MAP_WRITABLE;
	} else if (!strncmp(mode, "cow=", 4) && !(req->flags & DMU_REQ_RO_FAULT)) {
		rep->flags = DMU_MAP_COW;
		rep->reply.src_dev = atoi(mode + 4);
		rep->reply.src_sector = sector;
	} else if (!strncmp(mode, "copy=", 5) || !strncmp(mode, "cow=", 4)) {
		__u32 src = atoi(strchr(mode, '=') + 1);

		if (write && allocated)
			allocated[req->map.block] = 1;
		if (write) {
			rep->flags = DMU_MAP_WRITABLE;
			if (!(req->flags & DMU_REQ_WHOLE_BLOCK)) {
				rep->flags |= DMU_MAP_COPY_FIRST;
				rep->reply.src_dev = src;
				rep->reply.src_sector = sector;
			}
		} else {
			rep->reply.dev = src;
		}
	} else {
		rep->flags = DMU_MAP_WRITABLE;
	}
	if (run_blocks > 1 && !(rep->flags & (DMU_MAP_TEMPORARY | DMU_MAP_ERROR |
					      DMU_MAP_COPY_FIRST))) {
		__u64 left = feat.nr_blocks - req->map.block;
		__u32 run = run_blocks;

		if (run > feat.max_run)
			run = feat.max_run;
		if (run > left)
			run = left;
		/* A run must not answer an allocated block as unallocated, nor the reverse. */
		if (allocated) {
			__u32 i;

			for (i = 1; i < run; i++)
				if (allocated[req->map.block + i] !=
				    allocated[req->map.block])
					break;
			run = i;
		}
		/* swap maps neighbours apart: never a run */
		if (strcmp(mode, "swap"))
			rep->reply.run = run;
	}
}

int main(int argc, char **argv)
{
	const char *mode = "rw";
	long commit_delay = 0, fuzz_count = 0;
	unsigned long long ib = 0, ic = 0;
	static struct dmu_msg in[BATCH], out[BATCH];
	int opt, checked = 0, do_validate = 0, get_features = 0;

	while ((opt = getopt(argc, argv, "m:l:D:I:R:x:NVG")) != -1) {
		switch (opt) {
		case 'm':
			mode = optarg;
			break;
		case 'l':
			logf = fopen(optarg, "a");
			break;
		case 'D':
			commit_delay = atol(optarg);
			break;
		case 'I':
			if (sscanf(optarg, "%llu,%llu", &ib, &ic) != 2) {
				fprintf(stderr, "-I wants BLOCK,COUNT\n");
				return 2;
			}
			break;
		case 'R':
			run_blocks = atol(optarg);
			break;
		case 'x':
			fuzz_count = atol(optarg);
			break;
		case 'N':
			no_ack = 1;
			break;
		case 'V':
			do_validate = 1;
			break;
		case 'G':
			get_features = 1;
			break;
		default:
			fprintf(stderr, "usage: %s [-m MODE] [-l LOG] [-D MS] [-I B,C] [-R N] [-x N] [-N] [-V] [-G] DEV\n",
				argv[0]);
			return 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "%s: missing control device\n", argv[0]);
		return 2;
	}
	fd = open(argv[optind], O_RDWR);
	if (fd < 0) {
		perror(argv[optind]);
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);

	for (;;) {
		ssize_t r = read(fd, in, sizeof(in));
		int i, n, nout = 0;

		if (r < 0) {
			if (errno == EINTR)
				continue;
			perror("read");
			return 1;
		}
		if (r == 0) {
			logmsg("eof");
			return 0;
		}
		n = r / sizeof(in[0]);
		logmsg("batch %d", n);
		for (i = 0; i < n; i++) {
			struct dmu_msg *m = &in[i];

			switch (m->type) {
			case DMU_MSG_FEATURES:
				feat = m->features;
				if (!strncmp(mode, "cow=", 4) && !allocated)
					allocated = calloc(feat.nr_blocks, 1);
				logmsg("features id=%llu nr_blocks=%llu bs=%u devs=%u max_batch=%u max_run=%u reply_seq=%llu bits=0x%llx",
				       (unsigned long long)m->id,
				       (unsigned long long)feat.nr_blocks,
				       feat.block_sectors, feat.nr_devs,
				       feat.max_batch, feat.max_run,
				       (unsigned long long)feat.reply_seq,
				       (unsigned long long)feat.features);
				if (fuzz_count) {
					fuzz(fuzz_count);
					fuzz_count = 0;
				}
				if (get_features) {
					struct dmu_msg gf = { .type = DMU_MSG_GET_FEATURES,
							      .id = 77 };

					logmsg("get_features sent %d", send_msgs(&gf, 1));
					get_features = 0;
				}
				if (ic) {
					struct dmu_msg iv = { .type = DMU_MSG_INVALIDATE,
							      .id = 4242 };

					iv.invalidate.block = ib;
					iv.invalidate.count = ic;
					logmsg("invalidate sent %d", send_msgs(&iv, 1));
					ic = 0;
				}
				break;
			case DMU_MSG_MAP:
				logmsg("map %llu %llu %u", (unsigned long long)m->id,
				       (unsigned long long)m->map.block, m->flags);
				if (!strcmp(mode, "sink"))
					break;
				if (do_validate && !checked++)
					validate(m);
				answer_map(m, &out[nout++], mode);
				break;
			case DMU_MSG_COMMIT:
				logmsg("commit %llu covered=%llu alloc=%llu",
				       (unsigned long long)m->id,
				       (unsigned long long)m->commit_req.covered_seq,
				       (unsigned long long)m->commit_req.covered_alloc);
				if (commit_delay)
					usleep(commit_delay * 1000);
				memset(&out[nout], 0, sizeof(out[0]));
				out[nout].type = DMU_MSG_COMMIT_DONE;
				out[nout++].id = m->id;
				break;
			case DMU_MSG_INVALIDATE_DONE:
				logmsg("inval_done %llu %llu %llu",
				       (unsigned long long)m->id,
				       (unsigned long long)m->invalidate.block,
				       (unsigned long long)m->invalidate.count);
				break;
			case DMU_MSG_ALLOCATED:
				/* One line per block of the report, all with its id. */
				for (__u32 b = 0; b < m->allocated.count; b++) {
					__u64 blk = m->allocated.block + b;

					logmsg("allocated %llu %llu %u %llu %llu",
					       (unsigned long long)m->id,
					       (unsigned long long)blk,
					       m->allocated.dev,
					       (unsigned long long)(m->allocated.sector +
						       (__u64)b * feat.block_sectors),
					       (unsigned long long)(m->allocated.alloc_seq + b));
					if (allocated && blk < feat.nr_blocks)
						allocated[blk] = 1;
				}
				if (no_ack)
					break;
				memset(&out[nout], 0, sizeof(out[0]));
				out[nout].type = DMU_MSG_ALLOCATED_ACK;
				out[nout++].id = m->id;
				break;
			case DMU_MSG_COPY_ERROR:
				logmsg("copy_error %llu %llu %d",
				       (unsigned long long)m->id,
				       (unsigned long long)m->copy_error.block,
				       m->copy_error.error);
				break;
			default:
				logmsg("unknown type %u", m->type);
				break;
			}
		}
		if (nout) {
			int w = send_msgs(out, nout);

			if (w != nout) {
				fprintf(stderr, "write: %d of %d (%s)\n", w, nout,
					w < 0 ? strerror(-w) : "short");
				logmsg("write_failed %d", w);
			}
		}
	}
}
