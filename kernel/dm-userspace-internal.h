/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-userspace: state shared by the target (dm-userspace.c) and its control
 * channel (dm-userspace-transport.c). Not part of the ABI.
 */
#ifndef DM_USERSPACE_INTERNAL_H
#define DM_USERSPACE_INTERNAL_H

#include <linux/device-mapper.h>
#include <linux/dm-kcopyd.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mutex.h>
#include <linux/rbtree.h>
#include <linux/refcount.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include <linux/dm-userspace.h>

#define DM_MSG_PREFIX "userspace"

/* Most messages one read() returns: 4096 * 64 B = 256 KiB bounce buffer. */
#define DMU_MAX_BATCH 4096

/*
 * ALLOCATED reports the daemon is woken for at once, or after this long.
 * Each wake costs the daemon a batch: at 20 ms and 64, first writes at
 * random woke it for 3-6 reports at a time, and its CPU is what the
 * disk's own I/O competes with. Nothing waits for an ack but the
 * mapping's eviction; a flush's commit wakes the daemon at once.
 */
#define DMU_REPORT_BATCH 256
#define DMU_REPORT_DELAY msecs_to_jiffies(100)
/* Most blocks one ALLOCATED report grows to (its ack walks them). */
#define DMU_REPORT_MAX_BLOCKS 4096

/* Who answers requests that need userspace (reported by status). */
enum dmu_daemon_state {
	DMU_DAEMON_WAITING,	/* no daemon: requests wait (timeout) */
	DMU_DAEMON_CONNECTED,	/* control device open */
	DMU_DAEMON_FAILED,	/* timed out: requests fail with -EIO */
};

struct dmu_target;

/*
 * A message on its way to the daemon. Requests (MAP, COMMIT) have
 * ->consumed == NULL: once read they move to the sent list, because they
 * must be sent again if the daemon closes the device before answering.
 * Notifications have a ->consumed callback that frees them once read; it
 * is called with dmu_target.lock held and must only free memory.
 */
struct dmu_out {
	struct list_head node;
	struct dmu_msg msg;
	void (*consumed)(struct dmu_target *t, struct dmu_out *out);
};

struct dmu_target {
	struct dm_target *ti;
	struct kref kref;		/* target + open control file */

	/* Table, immutable after the constructor. */
	char key[DMU_KEY_MAX + 1];
	unsigned int block_sectors;
	unsigned int block_shift;
	u64 nr_blocks;
	unsigned int nr_devs;
	struct dm_dev *devs[DMU_MAX_DEVS];
	sector_t dev_sectors[DMU_MAX_DEVS];
	unsigned int daemon_timeout;	/* seconds, 0 = forever */
	unsigned int max_mappings;
	bool timeout_set;		/* feature args given, for TABLE */
	bool max_mappings_set;

	struct dm_kcopyd_client *kcopyd;
	struct workqueue_struct *wq;
	struct workqueue_struct *merge_wq;	/* dmu_merge_work(), never blocks */
	/* Merge buffers kept for reuse (dmu_merge_put()); not under lock. */
	spinlock_t merge_lock;
	struct list_head merge_free;
	unsigned int merge_nr_free;
	unsigned int merge_max_free;
	struct work_struct release_work;
	struct work_struct commit_work;
	struct delayed_work timeout_work;
	struct delayed_work report_work;	/* wakes the daemon for reports */

	/*
	 * Protects everything below: both trees, the LRU, the queues and
	 * lists of bios, the commit state, counters and the daemon state.
	 * Taken with irqsave; nothing that sleeps happens under it.
	 */
	spinlock_t lock;
	struct rb_root mappings;	/* struct dmu_mapping by block */
	struct list_head lru;		/* mapping order, CLOCK-scanned */
	unsigned int nr_mapped;
	struct rb_root pending;		/* struct dmu_pending by block */
	unsigned int nr_pending;
	/*
	 * A bio for an unmapped block this close after a block with a
	 * request in flight waits on that request instead of sending its
	 * own (see __dmu_ride()). The longest run the daemon has answered,
	 * halved each time a bio that waited so had to ask after all.
	 */
	u32 ride_span;
	u64 next_id;
	struct bio_list release;	/* bios the worker submits/remaps */

	/* Durability (see dmu_commit_work()). */
	struct bio_list commit_wait;	/* flushes, FUA: next commit */
	struct bio_list commit_bios;	/* served by the running commit */
	enum { DMU_COMMIT_IDLE, DMU_COMMIT_FLUSHING, DMU_COMMIT_WAITING }
		commit_state;
	struct dmu_out commit_out;	/* the DMU_MSG_COMMIT in flight */
	/*
	 * Map replies accepted so far, numbered 1, 2, ... (DMU_FEATURE_COMMIT_SEQ).
	 * A commit covers those up to commit_start_seq, taken when it starts;
	 * committed_seq once the daemon has answered.
	 */
	u64 reply_seq;
	u64 commit_start_seq;
	u64 committed_seq;		/* mappings up to here are durable */
	/* The same for allocations the kernel made itself (DMU_FEATURE_COW). */
	u64 alloc_seq;
	u64 commit_start_alloc;
	u64 committed_alloc;
	wait_queue_head_t copy_wait;	/* a copy-first finished */

	bool suspending;
	bool dead;			/* destructor ran: read() returns 0 */

	/* Control channel. */
	enum dmu_daemon_state daemon;
	bool features_pending;		/* FEATURES (id 0) not yet read */
	struct list_head outq;		/* dmu_out waiting for read() */
	struct list_head sent;		/* requests read, not answered */
	wait_queue_head_t wait;		/* readers and pollers */
	unsigned int reports_unwoken;	/* ALLOCATED queued since a wake */
	/*
	 * outq holds more than reports the daemon was not woken for: a
	 * request, a full batch of reports, or reports older than
	 * DMU_REPORT_DELAY. A blocking read waits for it, so a daemon that
	 * reads again at once is not handed each report as it comes.
	 */
	bool outq_due;
	struct mutex ctl_mutex;		/* write(), release vs dtr */
	struct miscdevice misc;
	char misc_name[DMU_KEY_MAX + 5];
	char misc_nodename[DMU_KEY_MAX + 5];
	bool misc_registered;

	/* Counters for status; under lock. */
	u64 hits, misses, copies, flushes, commits, evictions;
};

/* dm-userspace.c */
int dmu_handle_msg(struct dmu_target *t, const struct dmu_msg *msg);
void dmu_fill_features(struct dmu_target *t, struct dmu_msg *msg, u64 id);
void dmu_daemon_gone(struct dmu_target *t);
void dmu_target_release(struct kref *kref);

/* dm-userspace-transport.c */
int dmu_transport_register(struct dmu_target *t);
void dmu_transport_unregister(struct dmu_target *t);
void __dmu_queue_out(struct dmu_target *t, struct dmu_out *out, bool head);
bool __dmu_queue_report(struct dmu_target *t, struct dmu_out *out);
void dmu_report_work(struct work_struct *ws);

#endif /* DM_USERSPACE_INTERNAL_H */
