// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace control channel: one misc device /dev/dmu/<key> per target.
 *
 * The daemon reads batches of struct dmu_msg (requests and notifications
 * queued by the target) and writes batches of answers, which are handed to
 * dmu_handle_msg() one by one. See include/uapi/linux/dm-userspace.h for the
 * protocol; this file only moves whole messages and tracks who is connected.
 *
 * Locking: dmu_target.lock protects the queues and the daemon state;
 * dmu_target.ctl_mutex is held while a write() is processed so that the
 * destructor never runs under a reply. dmu_keys_mutex protects dmu_keys.
 */
#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "dm-userspace-internal.h"

/* Keys in use, so that two targets never register the same device name. */
static DEFINE_MUTEX(dmu_keys_mutex);
static LIST_HEAD(dmu_keys);

struct dmu_key {
	struct list_head node;
	char key[DMU_KEY_MAX + 1];
};

/* Queue a message for the daemon. Must be called with t->lock held. */
void __dmu_queue_out(struct dmu_target *t, struct dmu_out *out, bool head)
{
	if (head)
		list_add(&out->node, &t->outq);
	else
		list_add_tail(&out->node, &t->outq);
	t->reports_unwoken = 0;
	t->outq_due = true;
	wake_up_interruptible(&t->wait);
}

/* Does allocation @b follow on from report @a in block, place and number? */
static bool dmu_report_extends(struct dmu_target *t,
			       const struct dmu_allocated *a,
			       const struct dmu_allocated *b)
{
	return a->count < DMU_REPORT_MAX_BLOCKS && b->dev == a->dev &&
	       b->block == a->block + a->count &&
	       b->sector == a->sector + (u64)a->count * t->block_sectors &&
	       b->alloc_seq == a->alloc_seq + a->count;
}

/*
 * Queue a DMU_MSG_ALLOCATED report of one block. When the last message
 * waiting to be read is a report this one follows on from, that report
 * grows by the block instead, and @out is not queued: returns true, and
 * the caller frees it. Nothing is ever merged across another message (a
 * commit queued between them covers only the first).
 *
 * A report asks nothing urgent (the write it describes went on already),
 * so the daemon is woken once per DMU_REPORT_BATCH reports,
 * DMU_REPORT_DELAY after the first it was not woken for, or by any other
 * message (a flush's commit comes behind them). Must be called with
 * t->lock held.
 */
bool __dmu_queue_report(struct dmu_target *t, struct dmu_out *out)
{
	struct dmu_out *last;

	if (!list_empty(&t->outq)) {
		last = list_last_entry(&t->outq, struct dmu_out, node);
		if (last->msg.type == DMU_MSG_ALLOCATED &&
		    dmu_report_extends(t, &last->msg.allocated,
				       &out->msg.allocated)) {
			last->msg.allocated.count++;
			return true;
		}
	}
	list_add_tail(&out->node, &t->outq);
	if (++t->reports_unwoken >= DMU_REPORT_BATCH) {
		t->reports_unwoken = 0;
		t->outq_due = true;
		wake_up_interruptible(&t->wait);
	} else if (t->reports_unwoken == 1) {
		queue_delayed_work(t->wq, &t->report_work, DMU_REPORT_DELAY);
	}
	return false;
}

/* DMU_REPORT_DELAY has passed since a report the daemon was not woken for. */
void dmu_report_work(struct work_struct *ws)
{
	struct dmu_target *t = container_of(to_delayed_work(ws),
					    struct dmu_target, report_work);
	unsigned long flags;

	spin_lock_irqsave(&t->lock, flags);
	t->reports_unwoken = 0;
	/* Read meanwhile along with a request: nothing left to make due. */
	t->outq_due = !list_empty(&t->outq);
	spin_unlock_irqrestore(&t->lock, flags);
	wake_up_interruptible(&t->wait);
}

static bool dmu_readable(struct dmu_target *t)
{
	unsigned long flags;
	bool r;

	spin_lock_irqsave(&t->lock, flags);
	r = t->dead || t->features_pending ||
	    (t->outq_due && !list_empty(&t->outq));
	spin_unlock_irqrestore(&t->lock, flags);
	return r;
}

static int dmu_ctl_open(struct inode *inode, struct file *file)
{
	/* misc_open() set private_data and holds misc_mtx: t is alive. */
	struct miscdevice *misc = file->private_data;
	struct dmu_target *t = container_of(misc, struct dmu_target, misc);
	unsigned long flags;
	int r = 0;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;

	spin_lock_irqsave(&t->lock, flags);
	if (t->dead)
		r = -ENODEV;
	else if (t->daemon == DMU_DAEMON_CONNECTED)
		r = -EBUSY;
	if (!r) {
		t->daemon = DMU_DAEMON_CONNECTED;
		t->features_pending = true;
		/* What the last daemon left unanswered is due at once. */
		t->outq_due = true;
		kref_get(&t->kref);
	}
	spin_unlock_irqrestore(&t->lock, flags);
	if (r)
		return r;

	/* The timeout work rechecks the state, a non-sync cancel is enough. */
	cancel_delayed_work(&t->timeout_work);
	dm_table_event(t->ti->table);
	file->private_data = t;
	return stream_open(inode, file);
}

static int dmu_ctl_release(struct inode *inode, struct file *file)
{
	struct dmu_target *t = file->private_data;

	dmu_daemon_gone(t);
	kref_put(&t->kref, dmu_target_release);
	return 0;
}

/*
 * Take up to @max messages off the queue into @buf. Requests move to the
 * sent list, notifications are freed. Returns the number taken.
 */
static size_t dmu_take_batch(struct dmu_target *t, struct dmu_msg *buf,
			     size_t max)
{
	struct dmu_out *out, *tmp;
	unsigned long flags;
	size_t n = 0;

	spin_lock_irqsave(&t->lock, flags);
	/*
	 * As poll() says: reports alone are taken once due (see outq_due),
	 * even by a daemon that reads again at once.
	 */
	if (t->dead || !(t->features_pending || t->outq_due))
		goto out_unlock;
	t->reports_unwoken = 0;
	if (t->features_pending && n < max) {
		dmu_fill_features(t, &buf[n++], 0);
		t->features_pending = false;
	}
	list_for_each_entry_safe(out, tmp, &t->outq, node) {
		if (n >= max)
			break;
		buf[n++] = out->msg;
		list_del_init(&out->node);
		if (out->consumed)
			out->consumed(t, out);
		else
			list_add_tail(&out->node, &t->sent);
	}
	if (list_empty(&t->outq))
		t->outq_due = false;
out_unlock:
	spin_unlock_irqrestore(&t->lock, flags);
	return n;
}

static ssize_t dmu_ctl_read(struct file *file, char __user *ubuf,
			    size_t len, loff_t *ppos)
{
	struct dmu_target *t = file->private_data;
	size_t max = min_t(size_t, len / DMU_MSG_SIZE, DMU_MAX_BATCH);
	struct dmu_msg *buf;
	size_t n;
	int r;

	if (!max)
		return -EINVAL;

	buf = kvmalloc_array(max, sizeof(*buf), GFP_KERNEL);
	if (!buf)
		return -ENOMEM;

	for (;;) {
		n = dmu_take_batch(t, buf, max);
		if (n || READ_ONCE(t->dead))
			break;
		if (file->f_flags & O_NONBLOCK) {
			r = -EAGAIN;
			goto out_free;
		}
		r = wait_event_interruptible(t->wait, dmu_readable(t));
		if (r)
			goto out_free;
	}

	/*
	 * A fault here loses notifications; requests stay on the sent list
	 * and are sent again to the next opener.
	 */
	r = 0;
	if (n && copy_to_user(ubuf, buf, n * DMU_MSG_SIZE))
		r = -EFAULT;
out_free:
	kvfree(buf);
	return r ? r : (ssize_t)(n * DMU_MSG_SIZE);
}

static ssize_t dmu_ctl_write(struct file *file, const char __user *ubuf,
			     size_t len, loff_t *ppos)
{
	struct dmu_target *t = file->private_data;
	struct dmu_msg msg;
	size_t done = 0;
	int r = 0;

	if (!len || len % DMU_MSG_SIZE)
		return -EINVAL;

	mutex_lock(&t->ctl_mutex);
	while (done < len) {
		if (READ_ONCE(t->dead)) {
			r = -ENODEV;
			break;
		}
		if (copy_from_user(&msg, ubuf + done, sizeof(msg))) {
			r = -EFAULT;
			break;
		}
		r = dmu_handle_msg(t, &msg);
		if (r)
			break;
		done += sizeof(msg);
		if (fatal_signal_pending(current))
			break;
		cond_resched();
	}
	mutex_unlock(&t->ctl_mutex);

	return done ? (ssize_t)done : r;
}

static __poll_t dmu_ctl_poll(struct file *file, poll_table *wait)
{
	struct dmu_target *t = file->private_data;
	__poll_t mask = EPOLLOUT | EPOLLWRNORM;

	poll_wait(file, &t->wait, wait);
	if (dmu_readable(t))
		mask |= EPOLLIN | EPOLLRDNORM;
	if (READ_ONCE(t->dead))
		mask |= EPOLLHUP;
	return mask;
}

static const struct file_operations dmu_ctl_fops = {
	.owner = THIS_MODULE,
	.open = dmu_ctl_open,
	.release = dmu_ctl_release,
	.read = dmu_ctl_read,
	.write = dmu_ctl_write,
	.poll = dmu_ctl_poll,
};

static int dmu_key_claim(const char *key)
{
	struct dmu_key *k;

	list_for_each_entry(k, &dmu_keys, node)
		if (!strcmp(k->key, key))
			return -EBUSY;
	k = kzalloc(sizeof(*k), GFP_KERNEL);
	if (!k)
		return -ENOMEM;
	strscpy(k->key, key, sizeof(k->key));
	list_add(&k->node, &dmu_keys);
	return 0;
}

static void dmu_key_drop(const char *key)
{
	struct dmu_key *k;

	list_for_each_entry(k, &dmu_keys, node) {
		if (!strcmp(k->key, key)) {
			list_del(&k->node);
			kfree(k);
			return;
		}
	}
}

/* Create /dev/dmu/<key>. -EBUSY if another target uses the key. */
int dmu_transport_register(struct dmu_target *t)
{
	int r;

	mutex_lock(&dmu_keys_mutex);
	r = dmu_key_claim(t->key);
	if (r)
		goto out_unlock;

	snprintf(t->misc_name, sizeof(t->misc_name), "dmu-%s", t->key);
	snprintf(t->misc_nodename, sizeof(t->misc_nodename), "dmu/%s", t->key);
	t->misc.minor = MISC_DYNAMIC_MINOR;
	t->misc.name = t->misc_name;
	t->misc.nodename = t->misc_nodename;
	t->misc.mode = 0600;
	t->misc.fops = &dmu_ctl_fops;
	r = misc_register(&t->misc);
	if (r)
		dmu_key_drop(t->key);
	else
		t->misc_registered = true;
out_unlock:
	mutex_unlock(&dmu_keys_mutex);
	return r;
}

/*
 * Remove the device node (no new opener after this) and tell a connected
 * daemon the target is gone: its read() returns 0 from now on.
 */
void dmu_transport_unregister(struct dmu_target *t)
{
	unsigned long flags;

	if (t->misc_registered) {
		mutex_lock(&dmu_keys_mutex);
		misc_deregister(&t->misc);
		dmu_key_drop(t->key);
		mutex_unlock(&dmu_keys_mutex);
		t->misc_registered = false;
	}

	spin_lock_irqsave(&t->lock, flags);
	t->dead = true;
	spin_unlock_irqrestore(&t->lock, flags);
	wake_up_interruptible_all(&t->wait);

	/* Wait for a write() or a release in progress to finish with t. */
	mutex_lock(&t->ctl_mutex);
	mutex_unlock(&t->ctl_mutex);
}
