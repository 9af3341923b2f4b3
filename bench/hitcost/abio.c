// SPDX-License-Identifier: GPL-2.0
/*
 * abio: time the same O_DIRECT I/O on two block devices in alternating
 * rounds, so that both see the same milliseconds of a noisy (emulated)
 * machine. Used by bench/hitcost (see README.md there).
 *
 *   abio [-w] [-r] -b BYTES -s SPAN_MIB -n PER_ROUND -k ROUNDS DEV_A DEV_B
 *
 * Each round does PER_ROUND synchronous I/Os of BYTES on one device, then
 * on the other (A first in even rounds, B first in odd ones), and prints
 * one line: "seconds_on_A seconds_on_B". -w writes (zeros) instead of
 * reading; -r picks random BYTES-aligned offsets within the first SPAN_MIB
 * MiB (one xorshift stream per device, same seed, so both devices see the
 * same offsets); else each device reads on from where its last round ended,
 * wrapping at SPAN_MIB.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct side {
	const char *path;
	int fd;
	uint64_t next;		/* sequential: next block */
	uint64_t rng;		/* random: xorshift64 state */
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t xorshift64(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: abio [-w] [-r] -b BYTES -s SPAN_MIB -n PER_ROUND -k ROUNDS DEV_A DEV_B\n");
	exit(2);
}

static long positive(const char *what, const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v <= 0) {
		fprintf(stderr, "abio: %s must be a positive integer, not \"%s\"\n",
			what, s);
		exit(2);
	}
	return v;
}

static double run(struct side *d, void *buf, long bs, uint64_t blocks,
		  long per_round, int write, int random)
{
	double t0 = now();
	long i;

	for (i = 0; i < per_round; i++) {
		uint64_t block;
		ssize_t n;

		if (random) {
			block = xorshift64(&d->rng) % blocks;
		} else {
			block = d->next;
			d->next = (d->next + 1) % blocks;
		}
		n = write ? pwrite(d->fd, buf, bs, (off_t)(block * bs)) :
			    pread(d->fd, buf, bs, (off_t)(block * bs));
		if (n != bs) {
			fprintf(stderr, "abio: %s %s at %llu: %s\n",
				write ? "write to" : "read from", d->path,
				(unsigned long long)(block * bs),
				n < 0 ? strerror(errno) : "short transfer");
			exit(1);
		}
	}
	return now() - t0;
}

int main(int argc, char **argv)
{
	long bs = 0, span_mib = 0, per_round = 0, rounds = 0, r;
	int write = 0, random = 0, opt, k;
	struct side side[2];
	uint64_t blocks;
	void *buf;

	while ((opt = getopt(argc, argv, "wrb:s:n:k:")) != -1) {
		switch (opt) {
		case 'w': write = 1; break;
		case 'r': random = 1; break;
		case 'b': bs = positive("-b", optarg); break;
		case 's': span_mib = positive("-s", optarg); break;
		case 'n': per_round = positive("-n", optarg); break;
		case 'k': rounds = positive("-k", optarg); break;
		default: usage();
		}
	}
	if (argc - optind != 2 || !bs || !span_mib || !per_round || !rounds)
		usage();
	if (bs % 512) {
		fprintf(stderr, "abio: -b must be a multiple of 512 (O_DIRECT)\n");
		return 2;
	}
	blocks = ((uint64_t)span_mib << 20) / bs;
	if (!blocks) {
		fprintf(stderr, "abio: -s must span at least one I/O of -b bytes\n");
		return 2;
	}
	if (posix_memalign(&buf, 4096, bs)) {
		fprintf(stderr, "abio: cannot allocate %ld bytes\n", bs);
		return 1;
	}
	memset(buf, 0, bs);
	for (k = 0; k < 2; k++) {
		side[k].path = argv[optind + k];
		side[k].fd = open(side[k].path,
				  (write ? O_WRONLY : O_RDONLY) | O_DIRECT);
		if (side[k].fd < 0) {
			fprintf(stderr, "abio: cannot open %s: %s\n",
				side[k].path, strerror(errno));
			return 1;
		}
		side[k].next = 0;
		side[k].rng = 88172645463325252ULL;
	}
	for (r = 0; r < rounds; r++) {
		double t[2];

		for (k = 0; k < 2; k++) {
			int which = (r & 1) ? !k : k;

			t[which] = run(&side[which], buf, bs, blocks, per_round,
				       write, random);
		}
		printf("%.9f %.9f\n", t[0], t[1]);
	}
	return 0;
}
