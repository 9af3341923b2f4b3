// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace: a device-mapper target that asks a userspace daemon where
 * each block lives, remembers the answer and then remaps bios like
 * dm-linear. The control channel is in dm-userspace-transport.c; the ABI in
 * include/uapi/linux/dm-userspace.h.
 *
 * Table:
 *   <start> <len> userspace <key> <block_size_sectors>
 *           [<#feature args> [daemon_timeout <s>] [max_mappings <n>]]
 *           <dev0> [<dev1>...]
 *
 * <len> need not be a multiple of the block size: the last block is then
 * short (a disk's size is its image's, not rounded up), and its mappings
 * and copies cover only the sectors it has.
 *
 * Status INFO (one line, counters since the table was loaded):
 *   <hits> <misses> <pending> <copies> <flushes> <commits> <evictions>
 *   <mapped> daemon=<connected|waiting|failed>
 *
 *   hits       bios served from a remembered mapping
 *   misses     map requests queued for the daemon (incl. read-only faults)
 *   pending    blocks waiting for an answer (or a copy-first) right now
 *   copies     copy-firsts completed, the kernel's own COW copies included
 *   flushes    empty flush bios received
 *   commits    DMU_MSG_COMMIT answered by the daemon
 *   evictions  remembered mappings dropped to respect max_mappings
 *   mapped     remembered mappings right now
 *   daemon     connected: control device open; waiting: no daemon, I/O
 *              that needs one waits up to daemon_timeout; failed: the
 *              timeout expired, such I/O fails with -EIO until a daemon
 *              opens the device again
 *
 * Status TABLE: the constructor arguments (feature args only if given).
 *
 * Messages: "invalidate <first block> <count>" forgets mappings of that
 * range once bios in flight on them have finished (all but allocations
 * the daemon has not acknowledged yet, see DMU_M_UNACKED).
 */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/completion.h>
#include <linux/ctype.h>
#include <linux/err.h>
#include <linux/log2.h>
#include <linux/mempool.h>
#include <linux/module.h>
#include <linux/slab.h>

#include "dm-userspace-internal.h"

#define DMU_DEFAULT_TIMEOUT	60
#define DMU_DEFAULT_MAPPINGS	65536
#define DMU_MAX_BLOCK_SECTORS	16384
#define DMU_EVICT_SCAN		16
/*
 * Most blocks one map reply may answer (DMU_FEATURE_MAP_RUN): 4096
 * mappings are 320 KiB of slab, allocated in the daemon's write().
 */
#define DMU_MAX_RUN		4096

#define DMU_FEATURES_ALL (DMU_FEATURE_COPY_FIRST | DMU_FEATURE_TEMPORARY | \
			  DMU_FEATURE_ZERO | DMU_FEATURE_ERROR | \
			  DMU_FEATURE_INVALIDATE | DMU_FEATURE_COMMIT | \
			  DMU_FEATURE_COPY_ERROR | DMU_FEATURE_COMMIT_SEQ | \
			  DMU_FEATURE_MAP_RUN | DMU_FEATURE_COW)

/*
 * A remembered mapping. Memory cost: 88 bytes each (slab object, no other
 * allocation: the tree node and LRU link are embedded), so the default
 * max_mappings of 65536 costs about 5.5 MiB per target at most.
 */
struct dmu_mapping {
	struct rb_node node;		/* in dmu_target.mappings */
	struct list_head lru;		/* in dmu_target.lru */
	u64 block;
	sector_t sector;		/* start of the block on devs[dev] */
	u64 seq;			/* number of the reply (or allocation) */
	sector_t cow_sector;		/* DMU_MAP_COW: where a write puts it */
	struct dmu_inval *inval;	/* told when the last bio is done */
	refcount_t ref;			/* 1 for the tree + 1 per bio */
	u8 dev;
	u8 cow_dev;
	u16 flags;			/* DMU_MAP_WRITABLE/ZERO/DURABLE/COW */
};

/*
 * Made by the kernel on a write to a DMU_MAP_COW mapping: ->seq numbers
 * allocations (dmu_target.alloc_seq), not replies. Above the ABI's flags.
 */
#define DMU_M_KALLOC	(1U << 15)
/*
 * ... and the daemon has not acknowledged it yet: never evicted nor
 * invalidated meanwhile, since a daemon that does not know of it yet
 * could answer the block again as unallocated (in a run for a neighbour).
 */
#define DMU_M_UNACKED	(1U << 14)
/*
 * Hit since eviction last passed it: a hit sets only this bit, so the hit
 * path writes the mapping alone and never the LRU list's neighbours; the
 * eviction scan gives such a mapping a second chance (CLOCK).
 */
#define DMU_M_REFERENCED (1U << 13)

/* A block waiting for the daemon (or for its copy-first). */
struct dmu_pending {
	struct rb_node node;		/* in dmu_target.pending */
	struct dmu_out out;		/* DMU_MSG_MAP, later COPY_ERROR */
	struct dmu_target *t;
	u64 block;
	struct bio_list bios;		/* in submission order */
	bool copying;			/* answered, dm-kcopyd running */
	bool kalloc;			/* a COW allocation, not a request */
	u64 seq;			/* number of the reply (or allocation) */
	/* The answer, kept for the copy completion. */
	struct dmu_mapping *m;		/* NULL: not remembered */
	u32 flags;
	u32 dev;
	sector_t sector;
	int error;
};

/* An invalidation waiting for bios on the mappings it dropped. */
struct dmu_inval {
	struct dmu_out out;		/* DMU_MSG_INVALIDATE_DONE */
	struct dmu_target *t;
	atomic_t remaining;		/* 1 + mappings with bios in use */
	struct work_struct work;
	struct completion *done;	/* dmsetup message waits on this */
};

/*
 * Most blocks one clone may span: a bio over a contiguous run of
 * remembered blocks is remapped whole, like dm-linear, and holds a
 * reference on each mapping of the run. map cuts a longer bio itself
 * (dm_accept_partial_bio()) rather than through ti->max_io_len: with a
 * max_io_len, dm core also caps every clone at the queue's max_sectors,
 * so a 1 MiB read over a disk of 127 KiB requests became nine clones,
 * each mapped, where dm-linear passes one and lets the disk's queue split
 * it (the bio cost 14% more than dm-linear's over null_blk, 2% after).
 */
#define DMU_BIO_BLOCKS_MAX 32

/*
 * Per-bio data (ti->per_io_data_size, 264 bytes): the hit path allocates
 * nothing.
 */
struct dmu_per_bio {
	unsigned int nr_m;		/* references in m[] */
	unsigned int flags;
	struct dmu_mapping *m[DMU_BIO_BLOCKS_MAX]; /* put in end_io */
};

#define DMU_PB_REMAPPED	(1U << 0)	/* release: submit as is */
#define DMU_PB_REQUEUE	(1U << 1)	/* end_io: DM_ENDIO_REQUEUE */
#define DMU_PB_RODE	(1U << 2)	/* waited on another block's request */

static struct kmem_cache *dmu_mapping_cache;
static struct kmem_cache *dmu_pending_cache;
static mempool_t *dmu_pending_pool;

static struct dmu_per_bio *dmu_pb(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct dmu_per_bio));
}

static u64 dmu_bio_block(struct dmu_target *t, struct bio *bio)
{
	return dm_target_offset(t->ti, bio->bi_iter.bi_sector) >>
		t->block_shift;
}

/* Sectors of @block inside the target: block_sectors but for a short last. */
static sector_t dmu_block_len(struct dmu_target *t, u64 block)
{
	return min_t(sector_t, t->block_sectors,
		     t->ti->len - ((sector_t)block << t->block_shift));
}

static bool dmu_daemon_absent(struct dmu_target *t)
{
	return t->daemon == DMU_DAEMON_FAILED ||
		(t->suspending && t->daemon != DMU_DAEMON_CONNECTED);
}

/* ------------------------------------------------------------------ */
/* Trees. All must be called with t->lock held. */

static struct dmu_mapping *__dmu_mapping_find(struct dmu_target *t, u64 block)
{
	struct rb_node *n = t->mappings.rb_node;

	while (n) {
		struct dmu_mapping *m = rb_entry(n, struct dmu_mapping, node);

		if (block < m->block)
			n = n->rb_left;
		else if (block > m->block)
			n = n->rb_right;
		else
			return m;
	}
	return NULL;
}

/* First mapping with block >= @block, or NULL. */
static struct dmu_mapping *__dmu_mapping_ceil(struct dmu_target *t, u64 block)
{
	struct rb_node *n = t->mappings.rb_node;
	struct dmu_mapping *best = NULL;

	while (n) {
		struct dmu_mapping *m = rb_entry(n, struct dmu_mapping, node);

		if (block <= m->block) {
			best = m;
			n = n->rb_left;
		} else {
			n = n->rb_right;
		}
	}
	return best;
}

static void __dmu_mapping_insert(struct dmu_target *t, struct dmu_mapping *new)
{
	struct rb_node **p = &t->mappings.rb_node, *parent = NULL;

	while (*p) {
		struct dmu_mapping *m = rb_entry(*p, struct dmu_mapping, node);

		parent = *p;
		p = new->block < m->block ? &(*p)->rb_left : &(*p)->rb_right;
	}
	rb_link_node(&new->node, parent, p);
	rb_insert_color(&new->node, &t->mappings);
}

static struct dmu_pending *__dmu_pending_find(struct dmu_target *t, u64 block)
{
	struct rb_node *n = t->pending.rb_node;

	while (n) {
		struct dmu_pending *p = rb_entry(n, struct dmu_pending, node);

		if (block < p->block)
			n = n->rb_left;
		else if (block > p->block)
			n = n->rb_right;
		else
			return p;
	}
	return NULL;
}

/* First pending block >= @block, or NULL. */
static struct dmu_pending *__dmu_pending_ceil(struct dmu_target *t, u64 block)
{
	struct rb_node *n = t->pending.rb_node;
	struct dmu_pending *best = NULL;

	while (n) {
		struct dmu_pending *p = rb_entry(n, struct dmu_pending, node);

		if (block <= p->block) {
			best = p;
			n = n->rb_left;
		} else {
			n = n->rb_right;
		}
	}
	return best;
}

/* The request in flight for the last block <= @block, if any. Lock held. */
static struct dmu_pending *__dmu_pending_floor(struct dmu_target *t, u64 block)
{
	struct rb_node *n = t->pending.rb_node;
	struct dmu_pending *best = NULL;

	while (n) {
		struct dmu_pending *p = rb_entry(n, struct dmu_pending, node);

		if (p->block <= block) {
			best = p;
			n = n->rb_right;
		} else {
			n = n->rb_left;
		}
	}
	return best;
}

/* First block >= @block that has a mapping or a request in flight. Lock held. */
static u64 __dmu_next_busy(struct dmu_target *t, u64 block)
{
	struct dmu_mapping *m = __dmu_mapping_ceil(t, block);
	struct dmu_pending *p = t->nr_pending ? __dmu_pending_ceil(t, block) : NULL;
	u64 next = m ? m->block : U64_MAX;

	if (p && p->block < next)
		next = p->block;
	return next;
}

static void __dmu_pending_insert(struct dmu_target *t, struct dmu_pending *new)
{
	struct rb_node **p = &t->pending.rb_node, *parent = NULL;

	while (*p) {
		struct dmu_pending *e = rb_entry(*p, struct dmu_pending, node);

		parent = *p;
		p = new->block < e->block ? &(*p)->rb_left : &(*p)->rb_right;
	}
	rb_link_node(&new->node, parent, p);
	rb_insert_color(&new->node, &t->pending);
	t->nr_pending++;
}

static void __dmu_pending_erase(struct dmu_target *t, struct dmu_pending *p)
{
	rb_erase(&p->node, &t->pending);
	RB_CLEAR_NODE(&p->node);
	t->nr_pending--;
}

/* ------------------------------------------------------------------ */
/* Mapping lifetime. */

static void dmu_inval_put(struct dmu_inval *inv)
{
	if (atomic_dec_and_test(&inv->remaining))
		queue_work(inv->t->wq, &inv->work);
}

/* Last reference gone (any context, lock held or not). */
static void dmu_mapping_free(struct dmu_mapping *m)
{
	if (m->inval)
		dmu_inval_put(m->inval);
	kmem_cache_free(dmu_mapping_cache, m);
}

static void dmu_mapping_put(struct dmu_mapping *m)
{
	if (refcount_dec_and_test(&m->ref))
		dmu_mapping_free(m);
}

/* Remove from the table; freed once no bio uses it. Lock held. */
static void __dmu_mapping_drop(struct dmu_target *t, struct dmu_mapping *m)
{
	rb_erase(&m->node, &t->mappings);
	list_del(&m->lru);
	t->nr_mapped--;
	dmu_mapping_put(m);
}

static bool dmu_mapping_uncommitted(struct dmu_target *t,
				    struct dmu_mapping *m)
{
	/* A COW mapping is read-only until a write replaces it. */
	if (m->flags & (DMU_MAP_DURABLE | DMU_MAP_COW))
		return false;
	if (m->flags & DMU_M_KALLOC)
		return m->seq > t->committed_alloc;
	return m->seq > t->committed_seq;
}

/*
 * Make room for one mapping. The LRU list is in order of mapping and a
 * hit only marks DMU_M_REFERENCED, so this is CLOCK: among the first few,
 * a referenced mapping loses its mark and goes to the tail (a second
 * chance), and the first unreferenced clean one (no bio in flight,
 * committed) is the victim; else the first unreferenced one the daemon
 * knows of; else the oldest the daemon knows of. False when every mapping
 * is an unacknowledged allocation: the table then holds more than
 * max_mappings for a moment. Lock held.
 */
static bool __dmu_evict_one(struct dmu_target *t)
{
	struct dmu_mapping *m, *tmp, *victim = NULL, *known = NULL;
	unsigned int scanned = 0;

	list_for_each_entry_safe(m, tmp, &t->lru, lru) {
		if (++scanned > DMU_EVICT_SCAN)
			break;
		if (m->flags & DMU_M_REFERENCED) {
			m->flags &= ~DMU_M_REFERENCED;
			list_move_tail(&m->lru, &t->lru);
			continue;
		}
		if (refcount_read(&m->ref) == 1 &&
		    !dmu_mapping_uncommitted(t, m)) {
			victim = m;
			break;
		}
		if (!known && !(m->flags & DMU_M_UNACKED))
			known = m;
	}
	if (!victim)
		victim = known;
	if (!victim) {
		list_for_each_entry(m, &t->lru, lru) {
			if (!(m->flags & DMU_M_UNACKED)) {
				victim = m;
				break;
			}
		}
	}
	if (!victim)
		return false;
	__dmu_mapping_drop(t, victim);
	t->evictions++;
	return true;
}

/* A hit: mark it for the eviction scan, if not yet. Lock held. */
static inline void __dmu_mapping_touch(struct dmu_mapping *m)
{
	if (!(m->flags & DMU_M_REFERENCED))
		m->flags |= DMU_M_REFERENCED;
}

static void __dmu_mapping_install(struct dmu_target *t, struct dmu_mapping *m)
{
	struct dmu_mapping *old = __dmu_mapping_find(t, m->block);

	if (old)
		__dmu_mapping_drop(t, old);
	while (t->nr_mapped >= t->max_mappings && __dmu_evict_one(t))
		;
	__dmu_mapping_insert(t, m);
	list_add_tail(&m->lru, &t->lru);
	t->nr_mapped++;
}

/* ------------------------------------------------------------------ */
/* Bio routing. */

static void dmu_remap(struct dmu_target *t, struct bio *bio, unsigned int dev,
		      sector_t sector)
{
	sector_t offset = dm_target_offset(t->ti, bio->bi_iter.bi_sector) &
			  (t->block_sectors - 1);

	bio_set_dev(bio, t->devs[dev]->bdev);
	bio->bi_iter.bi_sector = sector + offset;
}

/* Lock held. */
static void __dmu_arm_timeout(struct dmu_target *t)
{
	if (t->daemon == DMU_DAEMON_WAITING && t->daemon_timeout && !t->dead)
		queue_delayed_work(t->wq, &t->timeout_work,
				   (unsigned long)t->daemon_timeout * HZ);
}

static int dmu_absent_result(struct dmu_target *t)
{
	return t->suspending && dm_noflush_suspending(t->ti) ?
		DM_MAPIO_REQUEUE : DM_MAPIO_KILL;
}

static void dmu_resolve(struct dmu_target *t, struct dmu_pending *p,
			bool direct);
static void dmu_copy_done(int read_err, unsigned long write_err,
			  void *context);

/* A pending block (or an ALLOCATED report), zeroed. May sleep. */
static struct dmu_pending *dmu_pending_alloc(void)
{
	struct dmu_pending *p = mempool_alloc(dmu_pending_pool, GFP_NOIO);

	memset(p, 0, sizeof(*p));
	return p;
}

/*
 * A write hit @cow, a DMU_MAP_COW mapping: number the block's allocation
 * where the daemon said, make @m the writable mapping it becomes, and
 * @p's message the ALLOCATED report that tells the daemon. Lock held.
 */
static void __dmu_cow_prepare(struct dmu_target *t, struct dmu_mapping *cow,
			      struct dmu_pending *p, struct dmu_mapping *m)
{
	p->t = t;
	p->block = cow->block;
	bio_list_init(&p->bios);
	p->kalloc = true;
	p->seq = ++t->alloc_seq;
	p->flags = DMU_MAP_WRITABLE;

	m->block = cow->block;
	m->dev = cow->cow_dev;
	m->sector = cow->cow_sector;
	m->flags = DMU_MAP_WRITABLE | DMU_M_KALLOC | DMU_M_UNACKED;
	m->seq = p->seq;
	refcount_set(&m->ref, 1);

	INIT_LIST_HEAD(&p->out.node);
	p->out.msg.type = DMU_MSG_ALLOCATED;
	p->out.msg.id = ++t->next_id;
	p->out.msg.allocated.block = m->block;
	p->out.msg.allocated.sector = m->sector;
	p->out.msg.allocated.alloc_seq = p->seq;
	p->out.msg.allocated.dev = m->dev;
	p->out.msg.allocated.count = 1;
}

/*
 * The first write to @cow covers its whole block: nothing to copy, so
 * the writable mapping @m goes in at once, its report is queued in the
 * same breath (as dmu_resolve does), and @bio is remapped like a hit: no
 * pending block, no trip through the release worker. @p lives on as the
 * report until the daemon acknowledges it, unless the report merged into
 * the one before it: then this returns true and the caller frees @p.
 * Lock held.
 */
static bool __dmu_cow_whole(struct dmu_target *t, struct dmu_mapping *cow,
			    struct dmu_pending *p, struct dmu_mapping *m,
			    struct bio *bio)
{
	struct dmu_per_bio *pb = dmu_pb(bio);
	bool merged;

	__dmu_cow_prepare(t, cow, p, m);
	__dmu_mapping_drop(t, cow);
	__dmu_mapping_install(t, m);
	merged = __dmu_queue_report(t, &p->out);
	refcount_inc(&m->ref);
	pb->m[0] = m;
	pb->nr_m = 1;
	return merged;
}

/*
 * Any other first write to @cow (part of its block, or FUA): @p becomes
 * the block's pending request (bios to the block wait behind it) until
 * dmu_resolve installs @m, after dm-kcopyd has copied the block from the
 * regions filled in here. Returns false when nothing needs copying (a
 * whole-block FUA write). Lock held.
 */
static bool __dmu_cow_start(struct dmu_target *t, struct dmu_mapping *cow,
			    struct dmu_pending *p, struct dmu_mapping *m,
			    struct bio *bio, struct dm_io_region *from,
			    struct dm_io_region *to)
{
	sector_t len = dmu_block_len(t, cow->block);

	__dmu_cow_prepare(t, cow, p, m);
	bio_list_add(&p->bios, bio);
	p->copying = bio_sectors(bio) != len;
	p->m = m;

	from->bdev = t->devs[cow->dev]->bdev;
	from->sector = cow->sector;
	from->count = len;
	to->bdev = t->devs[m->dev]->bdev;
	to->sector = m->sector;
	to->count = len;

	__dmu_pending_insert(t, p);
	__dmu_mapping_drop(t, cow);
	return p->copying;
}

/*
 * Largest block a first partial write is merged for (256 KiB): a merge holds
 * a block-sized buffer while in flight, and the larger the block the more
 * often its high-order allocation fails (dm-kcopyd then copies instead).
 */
#define DMU_MERGE_MAX_SECTORS	512

/*
 * Merge buffers a target keeps for reuse once their merge is done, at most
 * this many bytes of them. A new buffer is a high-order allocation that
 * init_on_alloc (on in Debian's kernels) zeroes, in the context of the
 * process submitting the write: 64 KiB cleared per first write, where
 * dm-kcopyd reuses the pages it reserved. Enough for the merges a queue
 * depth of 32 keeps in flight with 64 KiB blocks; freed at suspend.
 */
#define DMU_MERGE_CACHE_BYTES	(2U << 20)

/*
 * A first partial write to a COW block (or to a block the daemon answered
 * with copy-first), merged: the block is read from its source into @pages,
 * the write's bytes are laid over it, and the whole block goes to its new
 * place in one write. Copy-first (dm-kcopyd, as
 * dm-snapshot does) reads the block, writes it, and only then lets the bio
 * write its part: three I/Os one after the other where this does two.
 */
struct dmu_merge {
	struct work_struct work;
	struct list_head free_node;	/* in t->merge_free, once done */
	struct dmu_pending *p;
	struct bio *orig;		/* the write, first of p->bios */
	struct page *pages;
	unsigned int order;
	sector_t len;
	struct block_device *to_bdev;
	sector_t to_sector;
	blk_status_t status;
	bool written;			/* the bio below is the write */
	struct bio bio;			/* the read, then the write */
	struct bio_vec bvecs[];
};

static void dmu_merge_endio(struct bio *bio)
{
	struct dmu_merge *mg = container_of(bio, struct dmu_merge, bio);

	/* Interrupt context: the copy and the next step run in process. */
	mg->status = bio->bi_status;
	queue_work(mg->p->t->merge_wq, &mg->work);
}

/* Read or write the whole block between @mg's pages and @bdev. */
static void dmu_merge_submit(struct dmu_merge *mg, struct block_device *bdev,
			     sector_t sector, blk_opf_t opf)
{
	unsigned int bytes = mg->len << SECTOR_SHIFT;
	unsigned int i, nr = DIV_ROUND_UP(bytes, PAGE_SIZE);

	bio_init(&mg->bio, bdev, mg->bvecs, nr, opf);
	mg->bio.bi_iter.bi_sector = sector;
	mg->bio.bi_end_io = dmu_merge_endio;
	for (i = 0; i < nr; i++)
		__bio_add_page(&mg->bio, nth_page(mg->pages, i),
			       min_t(unsigned int, PAGE_SIZE,
				     bytes - i * PAGE_SIZE), 0);
	/* May complete at once: @mg belongs to dmu_merge_work() from here. */
	submit_bio(&mg->bio);
}

/* Lay the write's bytes over the block read into @mg's pages. */
static void dmu_merge_copy_in(struct dmu_merge *mg)
{
	struct dmu_target *t = mg->p->t;
	sector_t offset = dm_target_offset(t->ti, mg->orig->bi_iter.bi_sector) &
			  (t->block_sectors - 1);
	char *to = page_address(mg->pages) + (offset << SECTOR_SHIFT);
	struct bvec_iter iter;
	struct bio_vec bv;

	bio_for_each_segment(bv, mg->orig, iter) {
		memcpy_from_bvec(to, &bv);
		to += bv.bv_len;
	}
}

/* A block-sized merge buffer: a kept one if any, else a new one. */
static struct dmu_merge *dmu_merge_get(struct dmu_target *t)
{
	unsigned int bytes = t->block_sectors << SECTOR_SHIFT;
	struct dmu_merge *mg;
	unsigned long flags;

	spin_lock_irqsave(&t->merge_lock, flags);
	mg = list_first_entry_or_null(&t->merge_free, struct dmu_merge,
				      free_node);
	if (mg) {
		list_del(&mg->free_node);
		t->merge_nr_free--;
	}
	spin_unlock_irqrestore(&t->merge_lock, flags);
	if (mg)
		return mg;

	mg = kmalloc(struct_size(mg, bvecs, DIV_ROUND_UP(bytes, PAGE_SIZE)),
		     GFP_NOIO | __GFP_NOWARN);
	if (!mg)
		return NULL;
	mg->order = get_order(bytes);
	mg->pages = alloc_pages(GFP_NOIO | __GFP_NOWARN | __GFP_NORETRY,
				mg->order);
	if (!mg->pages) {
		kfree(mg);
		return NULL;
	}
	return mg;
}

static void dmu_merge_free(struct dmu_merge *mg)
{
	__free_pages(mg->pages, mg->order);
	kfree(mg);
}

/*
 * Keep @mg for the next merge, or free it if enough are kept. Its pages
 * are not cleared: a merge reads the whole block over them before use.
 */
static void dmu_merge_put(struct dmu_target *t, struct dmu_merge *mg)
{
	unsigned long flags;

	spin_lock_irqsave(&t->merge_lock, flags);
	if (t->merge_nr_free < t->merge_max_free) {
		list_add(&mg->free_node, &t->merge_free);
		t->merge_nr_free++;
		mg = NULL;
	}
	spin_unlock_irqrestore(&t->merge_lock, flags);
	if (mg)
		dmu_merge_free(mg);
}

/* Free the kept merge buffers: no merge is in flight (suspended, dtr). */
static void dmu_merge_drop_kept(struct dmu_target *t)
{
	struct dmu_merge *mg, *next;
	unsigned long flags;
	LIST_HEAD(kept);

	spin_lock_irqsave(&t->merge_lock, flags);
	list_splice_init(&t->merge_free, &kept);
	t->merge_nr_free = 0;
	spin_unlock_irqrestore(&t->merge_lock, flags);
	list_for_each_entry_safe(mg, next, &kept, free_node)
		dmu_merge_free(mg);
}

/*
 * After the read: merge and write. After the write: the block is in place
 * as after a copy-first, so dmu_copy_done() installs the mapping and
 * routes the bios that queued meanwhile; the merged write itself is done.
 * A failed read or write fails like a copy-first (the write is still
 * among p->bios, so it fails with them).
 */
static void dmu_merge_work(struct work_struct *ws)
{
	struct dmu_merge *mg = container_of(ws, struct dmu_merge, work);
	struct dmu_pending *p = mg->p;
	struct dmu_target *t = p->t;
	struct bio *orig = mg->orig, *bio;
	bool written = mg->written;
	struct bio_list rest;
	unsigned long flags;

	bio_uninit(&mg->bio);
	if (mg->status) {
		dmu_merge_put(t, mg);
		dmu_copy_done(!written, written, p);
		return;
	}
	if (!written) {
		dmu_merge_copy_in(mg);
		mg->written = true;
		dmu_merge_submit(mg, mg->to_bdev, mg->to_sector,
				 REQ_OP_WRITE | (orig->bi_opf & REQ_SYNC));
		return;
	}

	/* The merged write is done: only the bios queued behind it are left. */
	bio_list_init(&rest);
	spin_lock_irqsave(&t->lock, flags);
	while ((bio = bio_list_pop(&p->bios)))
		if (bio != orig)
			bio_list_add(&rest, bio);
	p->bios = rest;
	spin_unlock_irqrestore(&t->lock, flags);
	dmu_merge_put(t, mg);
	dmu_copy_done(0, 0, p);
	bio_endio(orig);
}

/*
 * Merge @bio, the first write to the block @p copies @from -> @to, instead
 * of copying first (a COW allocation, or a daemon's copy-first answer):
 * only a plain write (a FUA one waits for a commit after its copy, which
 * the copy-first path does) to a block small enough.
 * Returns false, having done nothing, when dm-kcopyd should copy instead:
 * not such a write, or no memory (never waited for).
 */
static bool dmu_merge_start(struct dmu_target *t, struct dmu_pending *p,
			    struct bio *bio, const struct dm_io_region *from,
			    const struct dm_io_region *to)
{
	struct dmu_merge *mg;

	if (bio_op(bio) != REQ_OP_WRITE || (bio->bi_opf & REQ_FUA) ||
	    t->block_sectors > DMU_MERGE_MAX_SECTORS)
		return false;
	/* Block-sized: from->count is a block, or less for the last one. */
	mg = dmu_merge_get(t);
	if (!mg)
		return false;
	INIT_WORK(&mg->work, dmu_merge_work);
	mg->p = p;
	mg->orig = bio;
	mg->len = from->count;
	mg->to_bdev = to->bdev;
	mg->to_sector = to->sector;
	mg->status = BLK_STS_OK;
	mg->written = false;
	dmu_merge_submit(mg, from->bdev, from->sector, REQ_OP_READ);
	return true;
}

/*
 * Could the answer to a request for @from reach @block with its run? A
 * run never evicts: past the room left in the table, it stops short.
 * Lock held.
 */
static bool __dmu_run_may_reach(struct dmu_target *t, u64 from, u64 block)
{
	return block - from < t->max_mappings - min(t->nr_mapped,
						    t->max_mappings);
}

/*
 * A bio for @block, which has no mapping and no request of its own: let
 * it wait on the request in flight for a block shortly before it, when
 * the daemon's answers cover runs that long. A sequential first read or
 * write otherwise sends a request per block before the first answer
 * comes (dm core splits the bio at each unmapped block), and the daemon
 * answers them all, though the first answer's run covers the rest. The
 * rider goes through dmu_route() again once that request is answered
 * (dmu_resolve()): it is mapped by the run then, or asks for itself.
 * Only a plain request takes riders: not one being copied for (its
 * answer has no run) nor a kernel allocation. Lock held.
 */
static bool __dmu_ride(struct dmu_target *t, struct bio *bio, u64 block)
{
	struct dmu_pending *p;

	if (t->ride_span <= 1 || !t->nr_pending)
		return false;
	p = __dmu_pending_floor(t, block);
	if (!p || p->copying || p->kalloc || block - p->block >= t->ride_span)
		return false;
	/* Else the rider would ask after the answer rather than alongside. */
	if (!__dmu_run_may_reach(t, p->block, block))
		return false;
	dmu_pb(bio)->flags |= DMU_PB_RODE;
	bio_list_add(&p->bios, bio);
	return true;
}

/*
 * The block a cold read asks for: the first of its aligned window of
 * ride_span blocks (rounded down to a power of two) when nothing in the
 * window before it is remembered or asked for. The answer's run only
 * reaches forward, so random first reads would otherwise ask once for
 * each new lowest block of a region (about six times in 256 blocks) and
 * wait meanwhile; asked for its start, one answer maps the window. The
 * read rides on that request (DMU_PB_RODE): where the run stops short of
 * it (allocated and unallocated blocks mixed) it asks for itself and the
 * span halves, as after any ride. Writes ask for their own block: in a
 * format without copy-on-write answers, a read's answer would leave the
 * write a second round trip. Lock held.
 */
static u64 __dmu_window(struct dmu_target *t, u64 block)
{
	u64 start;

	if (t->ride_span <= 1)
		return block;
	start = block & ~((u64)rounddown_pow_of_two(t->ride_span) - 1);
	if (start == block || __dmu_next_busy(t, start) < block ||
	    !__dmu_run_may_reach(t, start, block))
		return block;
	return start;
}

/* Is @bio waiting on @p's request for another block (see __dmu_ride())? */
static bool dmu_is_rider(struct dmu_target *t, struct dmu_pending *p,
			 struct bio *bio)
{
	return dmu_bio_block(t, bio) != p->block;
}

/*
 * Move @p's riders to the release list: the answer for @p's block says
 * nothing about theirs, so they are routed again. Lock held.
 */
static void __dmu_release_riders(struct dmu_target *t, struct dmu_pending *p)
{
	struct bio_list own;
	struct bio *bio;

	bio_list_init(&own);
	while ((bio = bio_list_pop(&p->bios))) {
		if (dmu_is_rider(t, p, bio))
			bio_list_add(&t->release, bio);
		else
			bio_list_add(&own, bio);
	}
	p->bios = own;
}

/*
 * Route a read or write bio: remap it through a remembered mapping, or
 * queue it behind the block's request to the daemon. Used by map and by
 * the release worker (bios whose request was answered). Returns a
 * DM_MAPIO_* code; the caller submits a DM_MAPIO_REMAPPED bio. @released
 * bios were answered by the daemon: they do not count as hits.
 */
static int dmu_route(struct dmu_target *t, struct bio *bio, bool released)
{
	struct dmu_per_bio *pb = dmu_pb(bio);
	u64 block = dmu_bio_block(t, bio);
	bool write = bio_data_dir(bio) == WRITE;
	struct dmu_pending *p, *newp = NULL;
	struct dmu_mapping *m, *newm = NULL;
	struct dm_io_region from, to;
	bool cow_nomem = false, copy, rode;
	unsigned long flags;
	unsigned int dev;
	sector_t sector;
	u32 req = 0;
	int r;

again:
	spin_lock_irqsave(&t->lock, flags);
	p = __dmu_pending_find(t, block);
	if (p) {
		/* Wait behind the request already in flight for the block. */
		bio_list_add(&p->bios, bio);
		r = DM_MAPIO_SUBMITTED;
		goto out_unlock;
	}

	m = __dmu_mapping_find(t, block);
	if (m && (!write || (m->flags & DMU_MAP_WRITABLE))) {
		/*
		 * A released bio is the one the mapping was made for (or
		 * queued with it): a use again is what earns the mark.
		 */
		if (!released) {
			t->hits++;
			__dmu_mapping_touch(m);
		}
		if (m->flags & DMU_MAP_ZERO) {
			spin_unlock_irqrestore(&t->lock, flags);
			zero_fill_bio(bio);
			bio_endio(bio);
			r = DM_MAPIO_SUBMITTED;
			goto out;
		}
		if (write && (bio->bi_opf & REQ_FUA) &&
		    dmu_mapping_uncommitted(t, m)) {
			/* Complete only once the mapping is committed. */
			bio_list_add(&t->commit_wait, bio);
			queue_work(t->wq, &t->commit_work);
			r = DM_MAPIO_SUBMITTED;
			goto out_unlock;
		}
		refcount_inc(&m->ref);
		pb->m[0] = m;
		pb->nr_m = 1;
		dev = m->dev;
		sector = m->sector;
		spin_unlock_irqrestore(&t->lock, flags);
		dmu_remap(t, bio, dev, sector);
		r = DM_MAPIO_REMAPPED;
		goto out;
	}
	if (m)
		req |= DMU_REQ_RO_FAULT;

	if (dmu_daemon_absent(t)) {
		r = dmu_absent_result(t);
		goto out_unlock;
	}

	/*
	 * First write to a COW block: the kernel allocates it, no round
	 * trip. Without memory for the new mapping, ask the daemon instead
	 * (a DMU_REQ_RO_FAULT, which it answers with an allocation).
	 */
	if (m && (m->flags & DMU_MAP_COW) && !cow_nomem) {
		if (!newp || !newm) {
			spin_unlock_irqrestore(&t->lock, flags);
			if (!newp)
				newp = dmu_pending_alloc();
			if (!newm) {
				newm = kmem_cache_zalloc(dmu_mapping_cache,
							 GFP_NOIO | __GFP_NOWARN);
				cow_nomem = !newm;
			}
			goto again;
		}
		/* A FUA write waits for a commit: the pending path has that. */
		if (bio_sectors(bio) == dmu_block_len(t, block) &&
		    !(bio->bi_opf & REQ_FUA)) {
			/* newp stays set (freed below) if its report merged. */
			if (!__dmu_cow_whole(t, m, newp, newm, bio))
				newp = NULL;
			dev = newm->dev;
			sector = newm->sector;
			newm = NULL;
			spin_unlock_irqrestore(&t->lock, flags);
			dmu_remap(t, bio, dev, sector);
			r = DM_MAPIO_REMAPPED;
			goto out;
		}
		p = newp;
		newp = NULL;
		copy = __dmu_cow_start(t, m, p, newm, bio, &from, &to);
		newm = NULL;
		spin_unlock_irqrestore(&t->lock, flags);
		if (copy) {
			if (!dmu_merge_start(t, p, bio, &from, &to))
				dm_kcopyd_copy(t->kcopyd, &from, 1, &to, 0,
					       dmu_copy_done, p);
		} else {
			dmu_resolve(t, p, false);
			/* A commit may wait for this allocation's message. */
			wake_up_all(&t->copy_wait);
		}
		r = DM_MAPIO_SUBMITTED;
		goto out;
	}

	if (!m && __dmu_ride(t, bio, block)) {
		r = DM_MAPIO_SUBMITTED;
		goto out_unlock;
	}

	if (!newp) {
		spin_unlock_irqrestore(&t->lock, flags);
		newp = dmu_pending_alloc();
		goto again;
	}

	rode = pb->flags & DMU_PB_RODE;
	if (rode) {
		/*
		 * The answer it waited for did not cover it: the daemon's runs
		 * are shorter here (allocated and unallocated blocks mixed),
		 * so ride less far and ask alongside more.
		 */
		pb->flags &= ~DMU_PB_RODE;
		t->ride_span /= 2;
	}
	p = newp;
	newp = NULL;
	p->t = t;
	/* After a ride that fell short, a read asks for its own block. */
	p->block = write || rode ? block : __dmu_window(t, block);
	if (p->block != block)
		pb->flags |= DMU_PB_RODE;
	bio_list_init(&p->bios);
	bio_list_add(&p->bios, bio);
	if (write) {
		req |= DMU_REQ_WRITE;
		if (bio_sectors(bio) == dmu_block_len(t, block))
			req |= DMU_REQ_WHOLE_BLOCK;
	}
	INIT_LIST_HEAD(&p->out.node);
	p->out.msg.type = DMU_MSG_MAP;
	p->out.msg.flags = req;
	p->out.msg.id = ++t->next_id;
	p->out.msg.map.block = p->block;
	__dmu_pending_insert(t, p);
	t->misses++;
	__dmu_queue_out(t, &p->out, false);
	__dmu_arm_timeout(t);
	r = DM_MAPIO_SUBMITTED;

out_unlock:
	spin_unlock_irqrestore(&t->lock, flags);
out:
	if (newp)
		mempool_free(newp, dmu_pending_pool);
	if (newm)
		kmem_cache_free(dmu_mapping_cache, newm);
	return r;
}

/*
 * Remap @bio, which spans @nr blocks from @first, in one piece if every
 * block is remembered, none has a request in flight, and the mappings
 * are contiguous on one device (as a run allocated in order or an
 * identity map is): the common warm case then costs one clone, not one
 * per block. Zero mappings, read-only mappings under a write and
 * uncommitted mappings under FUA take the per-block path. Lock held.
 */
static bool __dmu_remap_run(struct dmu_target *t, struct bio *bio, u64 first,
			    unsigned int nr)
{
	struct dmu_per_bio *pb = dmu_pb(bio);
	bool write = bio_data_dir(bio) == WRITE;
	bool fua = write && (bio->bi_opf & REQ_FUA);
	struct dmu_mapping *m0, *m = NULL;
	struct rb_node *node;
	unsigned int i;

	for (i = 0; i < nr; i++) {
		/* Blocks are the tree's keys: the run is in-order neighbours. */
		node = m ? rb_next(&m->node) : NULL;
		m = node ? rb_entry(node, struct dmu_mapping, node) :
			   (i ? NULL : __dmu_mapping_find(t, first));
		if (!m || m->block != first + i)
			return false;
		if ((m->flags & DMU_MAP_ZERO) ||
		    (write && !(m->flags & DMU_MAP_WRITABLE)) ||
		    (fua && dmu_mapping_uncommitted(t, m)))
			return false;
		if (i && (m->dev != pb->m[0]->dev || m->sector !=
			  pb->m[0]->sector + (sector_t)i * t->block_sectors))
			return false;
		if (t->nr_pending && __dmu_pending_find(t, first + i))
			return false;
		pb->m[i] = m;
	}

	for (i = 0; i < nr; i++) {
		refcount_inc(&pb->m[i]->ref);
		__dmu_mapping_touch(pb->m[i]);
	}
	pb->nr_m = nr;
	t->hits += nr;
	m0 = pb->m[0];
	dmu_remap(t, bio, m0->dev, m0->sector);
	return true;
}

/*
 * Map a read or write from dm core. A bio within one block is routed as
 * is. A bio over several blocks is remapped whole when it can be;
 * otherwise it is cut at the end of its first block
 * (dm_accept_partial_bio(), so only from map) and dm core maps the rest
 * as a new bio, which may again take the whole-run path.
 */
static int dmu_map_span(struct dmu_target *t, struct bio *bio)
{
	sector_t offset = dm_target_offset(t->ti, bio->bi_iter.bi_sector);
	sector_t in_block = offset & (t->block_sectors - 1);
	u64 first = offset >> t->block_shift;
	unsigned int nr = (in_block + bio_sectors(bio) + t->block_sectors - 1) >>
			  t->block_shift;
	unsigned long flags;
	bool whole;

	if (nr > 1) {
		/* Cut at most once more below: dm core re-maps the rest. */
		if (nr > DMU_BIO_BLOCKS_MAX) {
			nr = DMU_BIO_BLOCKS_MAX;
			dm_accept_partial_bio(bio, ((sector_t)nr << t->block_shift) -
						   in_block);
		}
		spin_lock_irqsave(&t->lock, flags);
		whole = __dmu_remap_run(t, bio, first, nr);
		spin_unlock_irqrestore(&t->lock, flags);
		if (whole)
			return DM_MAPIO_REMAPPED;
		dm_accept_partial_bio(bio, t->block_sectors - in_block);
	}
	return dmu_route(t, bio, false);
}

/* End @bios with the positive errno @error, or requeue them. */
static void dmu_end_bios(struct bio_list *bios, int error, bool requeue)
{
	struct bio *bio;

	while ((bio = bio_list_pop(bios))) {
		if (requeue)
			dmu_pb(bio)->flags |= DMU_PB_REQUEUE;
		else
			bio->bi_status = errno_to_blk_status(-error);
		bio_endio(bio);
	}
}

/* Submit answered bios in order, from process context. */
static void dmu_release_work(struct work_struct *ws)
{
	struct dmu_target *t = container_of(ws, struct dmu_target,
					    release_work);
	struct bio_list bios;
	unsigned long flags;
	struct bio *bio;

	spin_lock_irqsave(&t->lock, flags);
	bios = t->release;
	bio_list_init(&t->release);
	spin_unlock_irqrestore(&t->lock, flags);

	while ((bio = bio_list_pop(&bios))) {
		struct dmu_per_bio *pb = dmu_pb(bio);

		if (pb->flags & DMU_PB_REMAPPED) {
			pb->flags &= ~DMU_PB_REMAPPED;
			dm_submit_bio_remap(bio, NULL);
			continue;
		}
		switch (dmu_route(t, bio, true)) {
		case DM_MAPIO_REMAPPED:
			dm_submit_bio_remap(bio, NULL);
			break;
		case DM_MAPIO_REQUEUE:
			pb->flags |= DMU_PB_REQUEUE;
			bio_endio(bio);
			break;
		case DM_MAPIO_KILL:
			bio_io_error(bio);
			break;
		default:
			break;
		}
	}
}

/* ------------------------------------------------------------------ */
/* Answers. */

/*
 * Remap each of @bios that the new mapping @m serves as a hit would be,
 * moving it to @remapped for the caller to submit; leave the rest (a
 * write @m does not allow, an uncommitted FUA write) in @bios, in order,
 * for dmu_route(). Lock held.
 */
static void __dmu_remap_own(struct dmu_target *t, struct dmu_mapping *m,
			    struct bio_list *bios, struct bio_list *remapped)
{
	struct bio_list rest;
	struct bio *bio;

	bio_list_init(&rest);
	while ((bio = bio_list_pop(bios))) {
		struct dmu_per_bio *pb = dmu_pb(bio);
		bool write = bio_data_dir(bio) == WRITE;

		if ((m->flags & DMU_MAP_ZERO) ||
		    (write && !(m->flags & DMU_MAP_WRITABLE)) ||
		    (write && (bio->bi_opf & REQ_FUA) &&
		     dmu_mapping_uncommitted(t, m))) {
			bio_list_add(&rest, bio);
			continue;
		}
		refcount_inc(&m->ref);
		pb->m[0] = m;
		pb->nr_m = 1;
		dmu_remap(t, bio, m->dev, m->sector);
		bio_list_add(remapped, bio);
	}
	*bios = rest;
}

/*
 * Apply the daemon's answer for @p (copy-first, if any, done): remember
 * the mapping or serve the waiting bios once, then free @p. @direct: the
 * caller is dm-kcopyd's completion (process context, outside any bio
 * submission), so the block's own bios are remapped and submitted here,
 * as dm-snapshot does after its copy, rather than routed again by the
 * release worker: one hop less on every first partial write.
 */
static void dmu_resolve(struct dmu_target *t, struct dmu_pending *p,
			bool direct)
{
	struct bio_list bios, zeroed, failed, remapped;
	unsigned long flags;
	struct bio *bio;
	bool keep = false;

	bio_list_init(&zeroed);
	bio_list_init(&failed);
	bio_list_init(&remapped);

	spin_lock_irqsave(&t->lock, flags);
	__dmu_pending_erase(t, p);
	__dmu_release_riders(t, p);
	bios = p->bios;
	bio_list_init(&p->bios);

	if (p->flags & DMU_MAP_ERROR) {
		bio_list_merge(&failed, &bios);
	} else if (p->m) {
		/* Remembered: the bios go through the table like new ones. */
		__dmu_mapping_install(t, p->m);
		if (direct)
			__dmu_remap_own(t, p->m, &bios, &remapped);
		bio_list_merge(&t->release, &bios);
	} else {
		/* Temporary: serve what is compatible, route the rest. */
		while ((bio = bio_list_pop(&bios))) {
			bool write = bio_data_dir(bio) == WRITE;

			if (write && !(p->flags & DMU_MAP_WRITABLE)) {
				bio_list_add(&t->release, bio);
			} else if (p->flags & DMU_MAP_ZERO) {
				bio_list_add(&zeroed, bio);
			} else {
				dmu_remap(t, bio, p->dev, p->sector);
				dmu_pb(bio)->flags |= DMU_PB_REMAPPED;
				bio_list_add(&t->release, bio);
			}
		}
	}
	if (p->kalloc) {
		/*
		 * Tell the daemon, in the same breath as the mapping goes in:
		 * a commit covering this allocation is queued after it. @p
		 * lives on as that request until the daemon acknowledges it,
		 * unless the report merged into the one queued before it.
		 */
		p->m = NULL;
		keep = !__dmu_queue_report(t, &p->out);
	}
	if (!bio_list_empty(&t->release))
		queue_work(t->wq, &t->release_work);
	spin_unlock_irqrestore(&t->lock, flags);

	while ((bio = bio_list_pop(&remapped)))
		dm_submit_bio_remap(bio, NULL);
	while ((bio = bio_list_pop(&zeroed))) {
		zero_fill_bio(bio);
		bio_endio(bio);
	}
	dmu_end_bios(&failed, p->error, false);
	if (!keep)
		mempool_free(p, dmu_pending_pool);
}

static void dmu_pending_consumed(struct dmu_target *t, struct dmu_out *out)
{
	mempool_free(container_of(out, struct dmu_pending, out),
		     dmu_pending_pool);
}

/* dm-kcopyd completion (kcopyd thread context). */
static void dmu_copy_done(int read_err, unsigned long write_err, void *context)
{
	struct dmu_pending *p = context;
	struct dmu_target *t = p->t;
	struct bio_list bios;
	unsigned long flags;
	u64 id;

	if (!read_err && !write_err) {
		spin_lock_irqsave(&t->lock, flags);
		t->copies++;
		spin_unlock_irqrestore(&t->lock, flags);
		dmu_resolve(t, p, true);
		wake_up_all(&t->copy_wait);
		return;
	}

	/* Fail the bios, remember nothing, tell the daemon. */
	spin_lock_irqsave(&t->lock, flags);
	__dmu_pending_erase(t, p);
	__dmu_release_riders(t, p);
	if (!bio_list_empty(&t->release))
		queue_work(t->wq, &t->release_work);
	bios = p->bios;
	bio_list_init(&p->bios);
	id = p->out.msg.id;
	memset(&p->out.msg, 0, sizeof(p->out.msg));
	p->out.msg.type = DMU_MSG_COPY_ERROR;
	p->out.msg.id = id;
	p->out.msg.copy_error.block = p->block;
	p->out.msg.copy_error.error = EIO;
	p->out.consumed = dmu_pending_consumed;
	__dmu_queue_out(t, &p->out, false);
	spin_unlock_irqrestore(&t->lock, flags);

	DMWARN_LIMIT("%s: copy-first for block %llu failed", t->key,
		     (unsigned long long)p->block);
	if (p->m) {
		kmem_cache_free(dmu_mapping_cache, p->m);
		p->m = NULL;
	}
	dmu_end_bios(&bios, EIO, false);
	wake_up_all(&t->copy_wait);
}

/*
 * Do @len sectors (a block's) at @sector fit on device @dev? The size is
 * read live, not taken from the constructor: image formats grow their file
 * when they allocate, and the daemon grows the loop device
 * (LOOP_SET_CAPACITY) before it hands out a mapping past the old end.
 */
static bool dmu_fits(struct dmu_target *t, u32 dev, u64 sector, sector_t len)
{
	sector_t size;

	if (dev >= t->nr_devs)
		return false;
	size = bdev_nr_sectors(t->devs[dev]->bdev);
	return sector <= size && size - sector >= len;
}

/*
 * How many blocks of a run after @block the table could take now: up to
 * the first block that has a mapping or a request in flight, and no more
 * than the room left (a run is a hint: it never evicts). Lock held.
 */
static u32 __dmu_run_room(struct dmu_target *t, u64 block, u32 run)
{
	u64 free = __dmu_next_busy(t, block + 1) - (block + 1);
	u32 n = run - 1;

	/* Room for the answer's own block too. */
	if (t->nr_mapped + 1 >= t->max_mappings)
		return 0;
	n = min_t(u32, n, t->max_mappings - t->nr_mapped - 1);
	return min_t(u64, n, free);
}

/*
 * Allocate the mappings the rest of @rep's run can use onto @spare
 * (linked by ->lru). Sized under the lock, allocated outside it; what
 * changes in between only makes the install stop earlier.
 */
static void dmu_alloc_run(struct dmu_target *t, const struct dmu_map_reply *rep,
			  u32 run, struct list_head *spare)
{
	struct dmu_mapping *m;
	unsigned long flags;
	u32 n, want;

	spin_lock_irqsave(&t->lock, flags);
	want = __dmu_run_room(t, rep->block, run);
	spin_unlock_irqrestore(&t->lock, flags);
	for (n = 0; n < want; n++) {
		m = kmem_cache_zalloc(dmu_mapping_cache,
				      GFP_KERNEL | __GFP_NOWARN);
		if (!m)
			break;
		list_add_tail(&m->lru, spare);
	}
}

/*
 * Remember blocks first->block + 1 .. + @run - 1 like @first, each one
 * block further on the device, from the @spare mappings. The run stops at
 * the first block that has a mapping or a request in flight: the daemon's
 * answer to that request, or the one it gave before, is newer than this
 * run (and a sequential read asks for many neighbours at once: each of
 * those answers stops at the next, in O(1), and the last one goes on).
 * Lock held.
 */
static void __dmu_install_run(struct dmu_target *t,
			      const struct dmu_mapping *first, u32 run,
			      struct list_head *spare)
{
	u32 i, n = __dmu_run_room(t, first->block, run);
	struct dmu_mapping *m;

	for (i = 1; i <= n && !list_empty(spare); i++) {
		m = list_first_entry(spare, struct dmu_mapping, lru);
		list_del(&m->lru);
		m->block = first->block + i;
		m->dev = first->dev;
		m->sector = (first->flags & DMU_MAP_ZERO) ? 0 :
			    first->sector + (sector_t)i * t->block_sectors;
		m->cow_dev = first->cow_dev;
		m->cow_sector = (first->flags & DMU_MAP_COW) ?
			first->cow_sector + (sector_t)i * t->block_sectors : 0;
		m->flags = first->flags;
		m->seq = first->seq;
		refcount_set(&m->ref, 1);
		__dmu_mapping_insert(t, m);
		list_add_tail(&m->lru, &t->lru);
		t->nr_mapped++;
	}
}

static void dmu_free_spare(struct list_head *spare)
{
	struct dmu_mapping *m, *tmp;

	list_for_each_entry_safe(m, tmp, spare, lru)
		kmem_cache_free(dmu_mapping_cache, m);
}

static int dmu_map_reply(struct dmu_target *t, const struct dmu_msg *msg)
{
	const struct dmu_map_reply *rep = &msg->reply;
	u32 f = msg->flags;
	u32 run = rep->run ? rep->run : 1;
	struct dmu_mapping *m = NULL;
	struct dmu_pending *p;
	struct dm_io_region from, to;
	struct bio *first;
	unsigned long flags;
	LIST_HEAD(spare);
	sector_t len;

	if ((f & ~DMU_MAP_FLAGS_ALL) || rep->reserved1)
		return -EINVAL;
	if (rep->block >= t->nr_blocks)
		return -EINVAL;
	if (run > DMU_MAX_RUN || run > t->nr_blocks - rep->block)
		return -EINVAL;
	if (run > 1 &&
	    (f & (DMU_MAP_TEMPORARY | DMU_MAP_ERROR | DMU_MAP_COPY_FIRST)))
		return -EINVAL;
	/* Remembered and read-only until the kernel allocates it. */
	if ((f & DMU_MAP_COW) && f != DMU_MAP_COW)
		return -EINVAL;
	/* The whole run; only the last block of the disk may be short. */
	len = (sector_t)(run - 1) * t->block_sectors +
	      dmu_block_len(t, rep->block + run - 1);
	if (f & DMU_MAP_ERROR) {
		if ((f & ~(DMU_MAP_ERROR | DMU_MAP_TEMPORARY)) ||
		    rep->error <= 0 || rep->error > MAX_ERRNO)
			return -EINVAL;
	} else if (rep->error) {
		return -EINVAL;
	}
	if ((f & DMU_MAP_ZERO) && (f & (DMU_MAP_WRITABLE | DMU_MAP_COPY_FIRST)))
		return -EINVAL;
	if (!(f & (DMU_MAP_ERROR | DMU_MAP_ZERO)) &&
	    !dmu_fits(t, rep->dev, rep->sector, len))
		return -EINVAL;
	if (f & (DMU_MAP_COPY_FIRST | DMU_MAP_COW)) {
		if (!dmu_fits(t, rep->src_dev, rep->src_sector, len))
			return -EINVAL;
	} else if (rep->src_dev || rep->src_sector) {
		return -EINVAL;
	}

	if (!(f & (DMU_MAP_TEMPORARY | DMU_MAP_ERROR))) {
		m = kmem_cache_zalloc(dmu_mapping_cache, GFP_KERNEL);
		if (!m)
			return -ENOMEM;
		m->block = rep->block;
		if (f & DMU_MAP_COW) {
			/* Reads go to the source until the first write. */
			m->sector = rep->src_sector;
			m->dev = rep->src_dev;
			m->cow_sector = rep->sector;
			m->cow_dev = rep->dev;
		} else if (!(f & DMU_MAP_ZERO)) {
			m->sector = rep->sector;
			m->dev = rep->dev;
		}
		m->flags = f & (DMU_MAP_WRITABLE | DMU_MAP_ZERO |
				DMU_MAP_DURABLE | DMU_MAP_COW);
		refcount_set(&m->ref, 1);
		if (run > 1)
			dmu_alloc_run(t, rep, run, &spare);
	}

	spin_lock_irqsave(&t->lock, flags);
	p = __dmu_pending_find(t, rep->block);
	if (!p || p->copying || p->out.msg.id != msg->id) {
		spin_unlock_irqrestore(&t->lock, flags);
		if (m)
			kmem_cache_free(dmu_mapping_cache, m);
		dmu_free_spare(&spare);
		return -EINVAL;
	}
	list_del_init(&p->out.node);
	p->seq = ++t->reply_seq;
	if (m) {
		/*
		 * Not the last run alone: at the end of a region first
		 * written at random the daemon answers short runs between
		 * allocated blocks, and the next region's first requests
		 * would all go out at once, though one answer covers them.
		 */
		t->ride_span = max(t->ride_span, run);
		m->seq = p->seq;
		/* Before any later reply: replies are applied in order. */
		__dmu_install_run(t, m, run, &spare);
	}
	p->m = m;
	p->flags = f;
	p->dev = rep->dev;
	p->sector = rep->sector;
	p->error = rep->error;
	p->copying = f & DMU_MAP_COPY_FIRST;
	/*
	 * The bio that asked comes first (riders join after it); a write
	 * into a block it will remember writable can be merged.
	 */
	first = m && (f & DMU_MAP_WRITABLE) ? bio_list_peek(&p->bios) : NULL;
	spin_unlock_irqrestore(&t->lock, flags);
	dmu_free_spare(&spare);

	if (!(f & DMU_MAP_COPY_FIRST)) {
		dmu_resolve(t, p, false);
		return 0;
	}

	from.bdev = t->devs[rep->src_dev]->bdev;
	from.sector = rep->src_sector;
	from.count = len;
	to.bdev = t->devs[rep->dev]->bdev;
	to.sector = rep->sector;
	to.count = len;
	if (!first || !dmu_merge_start(t, p, first, &from, &to))
		dm_kcopyd_copy(t->kcopyd, &from, 1, &to, 0, dmu_copy_done, p);
	return 0;
}

static int dmu_commit_done(struct dmu_target *t, const struct dmu_msg *msg)
{
	const struct dmu_commit_done *cd = &msg->commit;
	struct bio_list bios, reroute;
	unsigned long flags;
	struct bio *bio;
	bool more;

	if (msg->flags || cd->reserved0 ||
	    memchr_inv(cd->reserved, 0, sizeof(cd->reserved)) ||
	    cd->error < 0 || cd->error > MAX_ERRNO)
		return -EINVAL;

	bio_list_init(&reroute);
	spin_lock_irqsave(&t->lock, flags);
	if (t->commit_state != DMU_COMMIT_WAITING ||
	    msg->id != t->commit_out.msg.id) {
		spin_unlock_irqrestore(&t->lock, flags);
		return -EINVAL;
	}
	list_del_init(&t->commit_out.node);
	t->commit_state = DMU_COMMIT_IDLE;
	t->commits++;
	if (!cd->error) {
		t->committed_seq = t->commit_start_seq;
		t->committed_alloc = t->commit_start_alloc;
	}
	bios = t->commit_bios;
	bio_list_init(&t->commit_bios);
	more = !bio_list_empty(&t->commit_wait);
	spin_unlock_irqrestore(&t->lock, flags);

	while ((bio = bio_list_pop(&bios))) {
		if (cd->error) {
			bio->bi_status = errno_to_blk_status(-cd->error);
			bio_endio(bio);
		} else if (bio->bi_opf & REQ_PREFLUSH) {
			bio_endio(bio);
		} else {
			/* A FUA write whose mapping is now committed. */
			bio_list_add(&reroute, bio);
		}
	}
	spin_lock_irqsave(&t->lock, flags);
	if (!bio_list_empty(&reroute)) {
		bio_list_merge(&t->release, &reroute);
		queue_work(t->wq, &t->release_work);
	}
	if (more)
		queue_work(t->wq, &t->commit_work);
	spin_unlock_irqrestore(&t->lock, flags);
	return 0;
}

/*
 * Is every copy-first of a reply numbered up to @seq done (or failed), and
 * every allocation numbered up to @alloc in place with its message queued?
 * Walks the pending blocks: bounded, and only per flush.
 */
static bool dmu_copies_done(struct dmu_target *t, u64 seq, u64 alloc)
{
	unsigned long flags;
	struct rb_node *n;
	bool done = true;

	spin_lock_irqsave(&t->lock, flags);
	for (n = rb_first(&t->pending); n; n = rb_next(n)) {
		struct dmu_pending *p = rb_entry(n, struct dmu_pending, node);

		if (p->kalloc ? p->seq <= alloc : p->copying && p->seq <= seq) {
			done = false;
			break;
		}
	}
	spin_unlock_irqrestore(&t->lock, flags);
	return done;
}

/*
 * Flush every data device, then ask the daemon to commit. One commit at a
 * time: flushes arriving meanwhile wait for the next one, since the data
 * they cover may postdate the running commit's device flush.
 *
 * The commit covers every reply accepted before it started (covered_seq):
 * copy-firsts of those still running are waited for before the flush, so
 * no block's metadata can be made durable ahead of the data copied into
 * it. Copies of later replies do not hold the commit up.
 */
static void dmu_commit_work(struct work_struct *ws)
{
	struct dmu_target *t = container_of(ws, struct dmu_target, commit_work);
	struct bio_list bios;
	unsigned long flags;
	unsigned int i;
	bool more;
	int err = 0;

	spin_lock_irqsave(&t->lock, flags);
	if (t->commit_state != DMU_COMMIT_IDLE ||
	    bio_list_empty(&t->commit_wait)) {
		spin_unlock_irqrestore(&t->lock, flags);
		return;
	}
	bio_list_merge(&t->commit_bios, &t->commit_wait);
	bio_list_init(&t->commit_wait);
	t->commit_state = DMU_COMMIT_FLUSHING;
	t->commit_start_seq = t->reply_seq;
	t->commit_start_alloc = t->alloc_seq;
	spin_unlock_irqrestore(&t->lock, flags);

	wait_event(t->copy_wait, dmu_copies_done(t, t->commit_start_seq,
						 t->commit_start_alloc));

	for (i = 0; i < t->nr_devs; i++) {
		int r = blkdev_issue_flush(t->devs[i]->bdev);

		if (r && !err)
			err = r;
	}

	spin_lock_irqsave(&t->lock, flags);
	if (!err && dmu_daemon_absent(t))
		err = -EIO;
	if (err) {
		bios = t->commit_bios;
		bio_list_init(&t->commit_bios);
		t->commit_state = DMU_COMMIT_IDLE;
		more = !bio_list_empty(&t->commit_wait);
		spin_unlock_irqrestore(&t->lock, flags);
		dmu_end_bios(&bios, -err, false);
		if (more)
			queue_work(t->wq, &t->commit_work);
		return;
	}
	t->commit_state = DMU_COMMIT_WAITING;
	memset(&t->commit_out.msg, 0, sizeof(t->commit_out.msg));
	t->commit_out.msg.type = DMU_MSG_COMMIT;
	t->commit_out.msg.id = ++t->next_id;
	t->commit_out.msg.commit_req.covered_seq = t->commit_start_seq;
	t->commit_out.msg.commit_req.covered_alloc = t->commit_start_alloc;
	t->commit_out.consumed = NULL;
	__dmu_queue_out(t, &t->commit_out, false);
	__dmu_arm_timeout(t);
	spin_unlock_irqrestore(&t->lock, flags);
}

static void dmu_inval_work(struct work_struct *ws)
{
	struct dmu_inval *inv = container_of(ws, struct dmu_inval, work);
	struct dmu_target *t = inv->t;
	unsigned long flags;

	if (inv->done) {
		complete(inv->done);	/* the waiter frees inv */
		return;
	}
	spin_lock_irqsave(&t->lock, flags);
	__dmu_queue_out(t, &inv->out, false);
	spin_unlock_irqrestore(&t->lock, flags);
}

static void dmu_inval_consumed(struct dmu_target *t, struct dmu_out *out)
{
	kfree(container_of(out, struct dmu_inval, out));
}

/* Forget mappings of [block, block + count); @inv is told when done. */
static void dmu_invalidate(struct dmu_target *t, struct dmu_inval *inv,
			   u64 block, u64 count)
{
	struct dmu_mapping *m;
	struct rb_node *next;
	unsigned long flags;

	inv->t = t;
	INIT_WORK(&inv->work, dmu_inval_work);
	atomic_set(&inv->remaining, 1);

	spin_lock_irqsave(&t->lock, flags);
	m = __dmu_mapping_ceil(t, block);
	while (m && m->block - block < count) {
		next = rb_next(&m->node);
		/* The daemon has yet to hear of it (see DMU_M_UNACKED). */
		if (!(m->flags & DMU_M_UNACKED)) {
			m->inval = inv;
			atomic_inc(&inv->remaining);
			__dmu_mapping_drop(t, m);
		}
		m = next ? rb_entry(next, struct dmu_mapping, node) : NULL;
	}
	spin_unlock_irqrestore(&t->lock, flags);
	dmu_inval_put(inv);
}

static bool dmu_range_ok(struct dmu_target *t, u64 block, u64 count)
{
	return count && block < t->nr_blocks && count <= t->nr_blocks - block;
}

static int dmu_invalidate_msg(struct dmu_target *t, const struct dmu_msg *msg)
{
	const struct dmu_invalidate *in = &msg->invalidate;
	struct dmu_inval *inv;

	if (msg->flags || in->error || in->reserved0 ||
	    memchr_inv(in->reserved, 0, sizeof(in->reserved)) ||
	    !dmu_range_ok(t, in->block, in->count))
		return -EINVAL;

	inv = kzalloc(sizeof(*inv), GFP_KERNEL);
	if (!inv)
		return -ENOMEM;
	INIT_LIST_HEAD(&inv->out.node);
	inv->out.msg.type = DMU_MSG_INVALIDATE_DONE;
	inv->out.msg.id = msg->id;
	inv->out.msg.invalidate.block = in->block;
	inv->out.msg.invalidate.count = in->count;
	inv->out.consumed = dmu_inval_consumed;
	dmu_invalidate(t, inv, in->block, in->count);
	return 0;
}

/*
 * The daemon recorded an allocation: its request (a dmu_pending) goes, and
 * the mapping may now be evicted like any other.
 */
static int dmu_allocated_ack(struct dmu_target *t, const struct dmu_msg *msg)
{
	const struct dmu_allocated *a;
	struct dmu_mapping *m;
	struct rb_node *next;
	struct dmu_out *out;
	unsigned long flags;

	if (msg->flags || memchr_inv(msg->payload, 0, sizeof(msg->payload)))
		return -EINVAL;
	spin_lock_irqsave(&t->lock, flags);
	list_for_each_entry(out, &t->sent, node) {
		if (out->msg.type != DMU_MSG_ALLOCATED || out->msg.id != msg->id)
			continue;
		list_del(&out->node);
		a = &out->msg.allocated;
		/* The report's blocks are neighbours in the tree: one walk. */
		m = __dmu_mapping_ceil(t, a->block);
		while (m && m->block - a->block < a->count) {
			if ((m->flags & DMU_M_KALLOC) &&
			    m->seq == a->alloc_seq + (m->block - a->block))
				m->flags &= ~DMU_M_UNACKED;
			next = rb_next(&m->node);
			m = next ? rb_entry(next, struct dmu_mapping, node) : NULL;
		}
		spin_unlock_irqrestore(&t->lock, flags);
		mempool_free(container_of(out, struct dmu_pending, out),
			     dmu_pending_pool);
		return 0;
	}
	spin_unlock_irqrestore(&t->lock, flags);
	return -EINVAL;
}

static void dmu_free_consumed(struct dmu_target *t, struct dmu_out *out)
{
	kfree(out);
}

void dmu_fill_features(struct dmu_target *t, struct dmu_msg *msg, u64 id)
{
	memset(msg, 0, sizeof(*msg));
	msg->type = DMU_MSG_FEATURES;
	msg->id = id;
	msg->features.features = DMU_FEATURES_ALL;
	msg->features.nr_blocks = t->nr_blocks;
	msg->features.block_sectors = t->block_sectors;
	msg->features.nr_devs = t->nr_devs;
	msg->features.max_batch = DMU_MAX_BATCH;
	msg->features.max_run = DMU_MAX_RUN;
	msg->features.reply_seq = READ_ONCE(t->reply_seq);
	msg->features.alloc_seq = READ_ONCE(t->alloc_seq);
}

static int dmu_get_features(struct dmu_target *t, const struct dmu_msg *msg)
{
	struct dmu_out *out;
	unsigned long flags;

	if (msg->flags || memchr_inv(msg->payload, 0, sizeof(msg->payload)))
		return -EINVAL;
	out = kzalloc(sizeof(*out), GFP_KERNEL);
	if (!out)
		return -ENOMEM;
	dmu_fill_features(t, &out->msg, msg->id);
	out->consumed = dmu_free_consumed;
	spin_lock_irqsave(&t->lock, flags);
	__dmu_queue_out(t, out, false);
	spin_unlock_irqrestore(&t->lock, flags);
	return 0;
}

/* One message written by the daemon. Never trusts a field unchecked. */
int dmu_handle_msg(struct dmu_target *t, const struct dmu_msg *msg)
{
	switch (msg->type) {
	case DMU_MSG_GET_FEATURES:
		return dmu_get_features(t, msg);
	case DMU_MSG_MAP_REPLY:
		return dmu_map_reply(t, msg);
	case DMU_MSG_COMMIT_DONE:
		return dmu_commit_done(t, msg);
	case DMU_MSG_INVALIDATE:
		return dmu_invalidate_msg(t, msg);
	case DMU_MSG_ALLOCATED_ACK:
		return dmu_allocated_ack(t, msg);
	default:
		return -EINVAL;
	}
}

/* ------------------------------------------------------------------ */
/* No daemon. */

/*
 * Fail (or requeue, under a noflush suspend) every bio that waits for the
 * daemon: pending requests not being copied, and the commit's bios.
 */
static void dmu_fail_waiters(struct dmu_target *t, bool requeue)
{
	struct bio_list bios;
	struct rb_node *n, *next;
	unsigned long flags;

	bio_list_init(&bios);
	spin_lock_irqsave(&t->lock, flags);
	for (n = rb_first(&t->pending); n; n = next) {
		struct dmu_pending *p = rb_entry(n, struct dmu_pending, node);

		next = rb_next(n);
		/* Copies finish by themselves; an allocation needs no daemon. */
		if (p->copying || p->kalloc)
			continue;
		list_del_init(&p->out.node);
		__dmu_pending_erase(t, p);
		bio_list_merge(&bios, &p->bios);
		mempool_free(p, dmu_pending_pool);
	}
	if (t->commit_state == DMU_COMMIT_WAITING) {
		list_del_init(&t->commit_out.node);
		t->commit_state = DMU_COMMIT_IDLE;
		bio_list_merge(&bios, &t->commit_bios);
		bio_list_init(&t->commit_bios);
	}
	bio_list_merge(&bios, &t->commit_wait);
	bio_list_init(&t->commit_wait);
	spin_unlock_irqrestore(&t->lock, flags);

	dmu_end_bios(&bios, EIO, requeue);
}

static void dmu_timeout_work(struct work_struct *ws)
{
	struct dmu_target *t = container_of(to_delayed_work(ws),
					    struct dmu_target, timeout_work);
	unsigned long flags;

	spin_lock_irqsave(&t->lock, flags);
	if (t->daemon != DMU_DAEMON_WAITING || t->dead) {
		spin_unlock_irqrestore(&t->lock, flags);
		return;
	}
	t->daemon = DMU_DAEMON_FAILED;
	spin_unlock_irqrestore(&t->lock, flags);

	DMWARN("%s: no daemon for %u s, failing I/O that needs one", t->key,
	       t->daemon_timeout);
	dmu_fail_waiters(t, false);
	dm_table_event(t->ti->table);
}

/* The control device was closed: resend what was read, start the clock. */
void dmu_daemon_gone(struct dmu_target *t)
{
	unsigned long flags;
	bool fail;

	/* ctl_mutex keeps the destructor (and the table) away meanwhile. */
	mutex_lock(&t->ctl_mutex);
	spin_lock_irqsave(&t->lock, flags);
	if (t->dead) {
		t->daemon = DMU_DAEMON_WAITING;
		spin_unlock_irqrestore(&t->lock, flags);
		mutex_unlock(&t->ctl_mutex);
		return;
	}
	list_splice_init(&t->sent, &t->outq);
	t->daemon = DMU_DAEMON_WAITING;
	t->features_pending = false;
	fail = t->suspending;
	if (!list_empty(&t->outq) || t->nr_pending ||
	    t->commit_state != DMU_COMMIT_IDLE)
		__dmu_arm_timeout(t);
	spin_unlock_irqrestore(&t->lock, flags);

	/* A suspend in progress must not wait for a daemon that left. */
	if (fail)
		dmu_fail_waiters(t, dm_noflush_suspending(t->ti));
	dm_table_event(t->ti->table);
	mutex_unlock(&t->ctl_mutex);
}

/* ------------------------------------------------------------------ */
/* Target methods. */

static int dmu_map(struct dm_target *ti, struct bio *bio)
{
	struct dmu_target *t = ti->private;
	struct dmu_per_bio *pb = dmu_pb(bio);
	unsigned long flags;

	pb->nr_m = 0;
	pb->flags = 0;

	if (bio->bi_opf & REQ_PREFLUSH) {
		/* dm core sends flushes empty: flush devices, then commit. */
		spin_lock_irqsave(&t->lock, flags);
		t->flushes++;
		if (dmu_daemon_absent(t)) {
			int r = dmu_absent_result(t);

			spin_unlock_irqrestore(&t->lock, flags);
			return r;
		}
		bio_list_add(&t->commit_wait, bio);
		queue_work(t->wq, &t->commit_work);
		spin_unlock_irqrestore(&t->lock, flags);
		return DM_MAPIO_SUBMITTED;
	}

	if (bio_op(bio) != REQ_OP_READ && bio_op(bio) != REQ_OP_WRITE)
		return DM_MAPIO_KILL;

	return dmu_map_span(t, bio);
}

static int dmu_end_io(struct dm_target *ti, struct bio *bio,
		      blk_status_t *error)
{
	struct dmu_per_bio *pb = dmu_pb(bio);

	while (pb->nr_m)
		dmu_mapping_put(pb->m[--pb->nr_m]);
	if (pb->flags & DMU_PB_REQUEUE)
		return DM_ENDIO_REQUEUE;
	return DM_ENDIO_DONE;
}

static void dmu_presuspend(struct dm_target *ti)
{
	struct dmu_target *t = ti->private;
	unsigned long flags;
	bool absent;

	spin_lock_irqsave(&t->lock, flags);
	t->suspending = true;
	absent = t->daemon != DMU_DAEMON_CONNECTED;
	spin_unlock_irqrestore(&t->lock, flags);

	/*
	 * Like dm-clone: never let suspend wait for a daemon that is not
	 * there. With a daemon, its answers drain the queues.
	 */
	if (absent)
		dmu_fail_waiters(t, dm_noflush_suspending(ti));
}

static void dmu_postsuspend(struct dm_target *ti)
{
	struct dmu_target *t = ti->private;

	flush_workqueue(t->wq);
	/* Every bio is done, so every merge: an idle disk holds no buffers. */
	dmu_merge_drop_kept(t);
}

static void dmu_resume(struct dm_target *ti)
{
	struct dmu_target *t = ti->private;
	unsigned long flags;

	spin_lock_irqsave(&t->lock, flags);
	t->suspending = false;
	spin_unlock_irqrestore(&t->lock, flags);
}

static const char *dmu_daemon_name(enum dmu_daemon_state s)
{
	switch (s) {
	case DMU_DAEMON_CONNECTED:
		return "connected";
	case DMU_DAEMON_FAILED:
		return "failed";
	default:
		return "waiting";
	}
}

static void dmu_status(struct dm_target *ti, status_type_t type,
		       unsigned int status_flags, char *result,
		       unsigned int maxlen)
{
	struct dmu_target *t = ti->private;
	u64 hits, misses, copies, flushes, commits, evictions;
	unsigned int pending, mapped, i, nf;
	enum dmu_daemon_state daemon;
	unsigned long flags;
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		spin_lock_irqsave(&t->lock, flags);
		hits = t->hits;
		misses = t->misses;
		pending = t->nr_pending;
		copies = t->copies;
		flushes = t->flushes;
		commits = t->commits;
		evictions = t->evictions;
		mapped = t->nr_mapped;
		daemon = t->daemon;
		spin_unlock_irqrestore(&t->lock, flags);
		DMEMIT("%llu %llu %u %llu %llu %llu %llu %u daemon=%s",
		       hits, misses, pending, copies, flushes, commits,
		       evictions, mapped, dmu_daemon_name(daemon));
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %u", t->key, t->block_sectors);
		nf = (t->timeout_set ? 2 : 0) + (t->max_mappings_set ? 2 : 0);
		if (nf)
			DMEMIT(" %u", nf);
		if (t->timeout_set)
			DMEMIT(" daemon_timeout %u", t->daemon_timeout);
		if (t->max_mappings_set)
			DMEMIT(" max_mappings %u", t->max_mappings);
		for (i = 0; i < t->nr_devs; i++)
			DMEMIT(" %s", t->devs[i]->name);
		break;
	default:
		if (maxlen)
			result[0] = '\0';
		break;
	}
}

static int dmu_message(struct dm_target *ti, unsigned int argc, char **argv,
		       char *result, unsigned int maxlen)
{
	struct dmu_target *t = ti->private;
	DECLARE_COMPLETION_ONSTACK(done);
	unsigned long long block, count;
	struct dmu_inval *inv;
	char dummy;

	if (argc == 3 && !strcasecmp(argv[0], "invalidate")) {
		if (sscanf(argv[1], "%llu%c", &block, &dummy) != 1 ||
		    sscanf(argv[2], "%llu%c", &count, &dummy) != 1 ||
		    !dmu_range_ok(t, block, count)) {
			DMWARN("invalidate: invalid block range");
			return -EINVAL;
		}
		inv = kzalloc(sizeof(*inv), GFP_KERNEL);
		if (!inv)
			return -ENOMEM;
		inv->done = &done;
		dmu_invalidate(t, inv, block, count);
		wait_for_completion(&done);
		kfree(inv);
		return 0;
	}

	DMWARN("unrecognised message received: %s", argc ? argv[0] : "");
	return -EINVAL;
}

static int dmu_iterate_devices(struct dm_target *ti,
			       iterate_devices_callout_fn fn, void *data)
{
	struct dmu_target *t = ti->private;
	unsigned int i;
	int r = 0;

	for (i = 0; i < t->nr_devs && !r; i++)
		r = fn(ti, t->devs[i], 0, t->dev_sectors[i], data);
	return r;
}

/* ------------------------------------------------------------------ */
/* Constructor and destructor. */

static const char *dmu_parse_key(struct dmu_target *t, const char *key)
{
	size_t i, len = key ? strlen(key) : 0;

	if (!len || len > DMU_KEY_MAX)
		return "Invalid key length";
	if (key[0] == '.')
		return "Key must not start with a dot";
	for (i = 0; i < len; i++)
		if (!isalnum(key[i]) && !strchr("._-", key[i]))
			return "Invalid character in key";
	strscpy(t->key, key, sizeof(t->key));
	return NULL;
}

static const char *dmu_parse_block_size(struct dmu_target *t, const char *arg)
{
	unsigned int bs;
	char dummy;

	if (!arg || sscanf(arg, "%u%c", &bs, &dummy) != 1 ||
	    !bs || bs > DMU_MAX_BLOCK_SECTORS || !is_power_of_2(bs))
		return "Invalid block size";
	t->block_sectors = bs;
	t->block_shift = ilog2(bs);
	t->merge_max_free = max(1U, DMU_MERGE_CACHE_BYTES /
				(bs << SECTOR_SHIFT));
	return NULL;
}

static bool dmu_is_number(const char *s)
{
	if (!s || !*s)
		return false;
	for (; *s; s++)
		if (!isdigit(*s))
			return false;
	return true;
}

/* Optional "<#feature args> <arg>..." (a device is never a plain number). */
static int dmu_parse_features(struct dmu_target *t, struct dm_arg_set *as,
			      char **error)
{
	static const struct dm_arg _args[] = {
		{0, 4, "Invalid number of feature args"},
		{0, 31536000, "Invalid daemon_timeout"},
		{1, 1U << 30, "Invalid max_mappings"},
	};
	unsigned int argc;
	const char *name;
	int r;

	if (!as->argc || !dmu_is_number(as->argv[0]))
		return 0;

	r = dm_read_arg_group(_args, as, &argc, error);
	if (r)
		return r;

	while (argc) {
		name = dm_shift_arg(as);
		argc--;
		if (!argc) {
			*error = "Feature argument is missing its value";
			return -EINVAL;
		}
		if (!strcasecmp(name, "daemon_timeout")) {
			if (t->timeout_set) {
				*error = "Duplicate daemon_timeout";
				return -EINVAL;
			}
			r = dm_read_arg(_args + 1, as, &t->daemon_timeout,
					error);
			t->timeout_set = true;
		} else if (!strcasecmp(name, "max_mappings")) {
			if (t->max_mappings_set) {
				*error = "Duplicate max_mappings";
				return -EINVAL;
			}
			r = dm_read_arg(_args + 2, as, &t->max_mappings, error);
			t->max_mappings_set = true;
		} else {
			*error = "Unrecognised feature requested";
			return -EINVAL;
		}
		if (r)
			return r;
		argc--;
	}
	return 0;
}

static void dmu_put_devices(struct dmu_target *t)
{
	while (t->nr_devs)
		dm_put_device(t->ti, t->devs[--t->nr_devs]);
}

static int dmu_get_devices(struct dmu_target *t, struct dm_arg_set *as,
			   char **error)
{
	struct dm_target *ti = t->ti;
	int r;

	if (!as->argc || as->argc > DMU_MAX_DEVS) {
		*error = "Invalid number of devices";
		return -EINVAL;
	}
	while (as->argc) {
		r = dm_get_device(ti, dm_shift_arg(as),
				  dm_table_get_mode(ti->table),
				  &t->devs[t->nr_devs]);
		if (r) {
			*error = "Device lookup failed";
			dmu_put_devices(t);
			return r;
		}
		t->dev_sectors[t->nr_devs] =
			bdev_nr_sectors(t->devs[t->nr_devs]->bdev);
		t->nr_devs++;
	}
	return 0;
}

/*
 * Construct a userspace mapping:
 * <key> <block_size_sectors> [<#feature args> <arg>...] <dev0> [<dev1>...]
 */
static int dmu_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct dmu_target *t;
	const char *err;
	int r = -EINVAL;

	if (argc < 3) {
		ti->error = "Invalid argument count";
		return -EINVAL;
	}

	t = kzalloc(sizeof(*t), GFP_KERNEL);
	if (!t) {
		ti->error = "Cannot allocate context";
		return -ENOMEM;
	}
	t->ti = ti;
	kref_init(&t->kref);
	spin_lock_init(&t->lock);
	spin_lock_init(&t->merge_lock);
	INIT_LIST_HEAD(&t->merge_free);
	mutex_init(&t->ctl_mutex);
	init_waitqueue_head(&t->wait);
	init_waitqueue_head(&t->copy_wait);
	INIT_LIST_HEAD(&t->outq);
	INIT_LIST_HEAD(&t->sent);
	INIT_LIST_HEAD(&t->lru);
	INIT_LIST_HEAD(&t->commit_out.node);
	t->mappings = RB_ROOT;
	t->pending = RB_ROOT;
	bio_list_init(&t->release);
	bio_list_init(&t->commit_wait);
	bio_list_init(&t->commit_bios);
	INIT_WORK(&t->release_work, dmu_release_work);
	INIT_WORK(&t->commit_work, dmu_commit_work);
	INIT_DELAYED_WORK(&t->timeout_work, dmu_timeout_work);
	INIT_DELAYED_WORK(&t->report_work, dmu_report_work);
	t->daemon = DMU_DAEMON_WAITING;
	t->daemon_timeout = DMU_DEFAULT_TIMEOUT;
	t->max_mappings = DMU_DEFAULT_MAPPINGS;

	err = dmu_parse_key(t, dm_shift_arg(&as));
	if (!err)
		err = dmu_parse_block_size(t, dm_shift_arg(&as));
	if (err) {
		ti->error = (char *)err;
		goto bad_free;
	}
	r = dmu_parse_features(t, &as, &ti->error);
	if (r)
		goto bad_free;
	if (!ti->len) {
		ti->error = "Length must not be zero";
		r = -EINVAL;
		goto bad_free;
	}
	t->nr_blocks = (ti->len + t->block_sectors - 1) >> t->block_shift;

	r = dmu_get_devices(t, &as, &ti->error);
	if (r)
		goto bad_free;

	t->kcopyd = dm_kcopyd_client_create(NULL);
	if (IS_ERR(t->kcopyd)) {
		r = PTR_ERR(t->kcopyd);
		ti->error = "Cannot create kcopyd client";
		goto bad_put_devices;
	}

	t->wq = alloc_workqueue("dmu-%s", WQ_MEM_RECLAIM, 0, t->key);
	if (!t->wq) {
		r = -ENOMEM;
		ti->error = "Cannot create workqueue";
		goto bad_destroy_kcopyd;
	}

	/* Apart from t->wq, whose commit work waits for merges to finish. */
	t->merge_wq = alloc_workqueue("dmu-merge-%s", WQ_MEM_RECLAIM, 0,
				      t->key);
	if (!t->merge_wq) {
		r = -ENOMEM;
		ti->error = "Cannot create workqueue";
		goto bad_destroy_wq;
	}

	r = dmu_transport_register(t);
	if (r) {
		ti->error = r == -EBUSY ? "Key already in use" :
			"Cannot register control device";
		goto bad_destroy_merge_wq;
	}

	ti->num_flush_bios = 1;
	ti->per_io_data_size = sizeof(struct dmu_per_bio);
	ti->private = t;
	return 0;

bad_destroy_merge_wq:
	destroy_workqueue(t->merge_wq);
bad_destroy_wq:
	destroy_workqueue(t->wq);
bad_destroy_kcopyd:
	dm_kcopyd_client_destroy(t->kcopyd);
bad_put_devices:
	dmu_put_devices(t);
bad_free:
	kfree(t);
	return r;
}

void dmu_target_release(struct kref *kref)
{
	kfree(container_of(kref, struct dmu_target, kref));
}

/*
 * Free what is left. dm core suspended the target first, so no bio is in
 * flight; any bio still queued (a daemon that never answered) fails.
 */
static void dmu_drain(struct dmu_target *t)
{
	struct dmu_out *out, *tmp;
	struct rb_node *n, *next;
	struct bio_list bios;
	unsigned long flags;

	bio_list_init(&bios);
	spin_lock_irqsave(&t->lock, flags);
	for (n = rb_first(&t->pending); n; n = next) {
		struct dmu_pending *p = rb_entry(n, struct dmu_pending, node);

		next = rb_next(n);
		list_del_init(&p->out.node);
		__dmu_pending_erase(t, p);
		bio_list_merge(&bios, &p->bios);
		if (p->m)
			kmem_cache_free(dmu_mapping_cache, p->m);
		mempool_free(p, dmu_pending_pool);
	}
	list_del_init(&t->commit_out.node);
	bio_list_merge(&bios, &t->commit_bios);
	bio_list_merge(&bios, &t->commit_wait);
	bio_list_merge(&bios, &t->release);
	bio_list_init(&t->commit_bios);
	bio_list_init(&t->commit_wait);
	bio_list_init(&t->release);
	list_splice_init(&t->sent, &t->outq);
	list_for_each_entry_safe(out, tmp, &t->outq, node) {
		list_del_init(&out->node);
		if (out->consumed)
			out->consumed(t, out);
		else if (out->msg.type == DMU_MSG_ALLOCATED)
			mempool_free(container_of(out, struct dmu_pending, out),
				     dmu_pending_pool);
	}
	while (!list_empty(&t->lru))
		__dmu_mapping_drop(t, list_first_entry(&t->lru,
						       struct dmu_mapping,
						       lru));
	spin_unlock_irqrestore(&t->lock, flags);

	if (!bio_list_empty(&bios)) {
		DMWARN("%s: failing bios left at destruction", t->key);
		dmu_end_bios(&bios, EIO, false);
	}
}

static void dmu_dtr(struct dm_target *ti)
{
	struct dmu_target *t = ti->private;

	/* No new opener; a connected daemon reads 0 from now on. */
	dmu_transport_unregister(t);
	cancel_delayed_work_sync(&t->timeout_work);
	cancel_delayed_work_sync(&t->report_work);
	destroy_workqueue(t->merge_wq);
	dmu_merge_drop_kept(t);
	destroy_workqueue(t->wq);
	dm_kcopyd_client_destroy(t->kcopyd);
	dmu_drain(t);
	dmu_put_devices(t);
	kref_put(&t->kref, dmu_target_release);
}

static struct target_type dmu_target = {
	.name = "userspace",
	.version = {1, 0, 0},
	.module = THIS_MODULE,
	.ctr = dmu_ctr,
	.dtr = dmu_dtr,
	.map = dmu_map,
	.end_io = dmu_end_io,
	.presuspend = dmu_presuspend,
	.postsuspend = dmu_postsuspend,
	.resume = dmu_resume,
	.status = dmu_status,
	.message = dmu_message,
	.iterate_devices = dmu_iterate_devices,
};

static int __init dmu_init(void)
{
	int r;

	BUILD_BUG_ON(sizeof(struct dmu_msg) != DMU_MSG_SIZE);
	BUILD_BUG_ON(sizeof(struct dmu_features) != 48);
	BUILD_BUG_ON(sizeof(struct dmu_map_request) != 48);
	BUILD_BUG_ON(sizeof(struct dmu_map_reply) != 48);
	BUILD_BUG_ON(sizeof(struct dmu_commit_done) != 48);
	BUILD_BUG_ON(sizeof(struct dmu_invalidate) != 48);
	BUILD_BUG_ON(sizeof(struct dmu_copy_error) != 48);
	BUILD_BUG_ON(sizeof(struct dmu_allocated) != 48);
	BUILD_BUG_ON(sizeof(struct dmu_commit) != 48);
	BUILD_BUG_ON(offsetof(struct dmu_msg, payload) != 16);

	dmu_mapping_cache = KMEM_CACHE(dmu_mapping, 0);
	if (!dmu_mapping_cache)
		return -ENOMEM;
	dmu_pending_cache = KMEM_CACHE(dmu_pending, 0);
	if (!dmu_pending_cache) {
		r = -ENOMEM;
		goto bad_mapping_cache;
	}
	dmu_pending_pool = mempool_create_slab_pool(64, dmu_pending_cache);
	if (!dmu_pending_pool) {
		r = -ENOMEM;
		goto bad_pending_cache;
	}
	r = dm_register_target(&dmu_target);
	if (r < 0) {
		DMERR("register failed %d", r);
		goto bad_pool;
	}
	return 0;

bad_pool:
	mempool_destroy(dmu_pending_pool);
bad_pending_cache:
	kmem_cache_destroy(dmu_pending_cache);
bad_mapping_cache:
	kmem_cache_destroy(dmu_mapping_cache);
	return r;
}

static void __exit dmu_exit(void)
{
	dm_unregister_target(&dmu_target);
	mempool_destroy(dmu_pending_pool);
	kmem_cache_destroy(dmu_pending_cache);
	kmem_cache_destroy(dmu_mapping_cache);
}

module_init(dmu_init);
module_exit(dmu_exit);

MODULE_DESCRIPTION(DM_NAME " target asking a daemon where blocks live");
MODULE_LICENSE("GPL");
MODULE_ALIAS("dm-userspace");
