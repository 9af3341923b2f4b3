// SPDX-License-Identifier: GPL-2.0-only
/*
 * fakexen.c - stand-in for the Xen libraries so that Debian's C xenstored
 * (xen-utils-4.17, /usr/lib/xen-4.17/bin/xenstored) runs on a host that has
 * no hypervisor. Loaded with LD_PRELOAD by test/support/xenstored.ts.
 *
 * Why it is needed: xenstored links libxenctrl, libxenevtchn and
 * libxengnttab, and at start-up introduces dom0 by reading its event channel
 * port from /proc/xen/xsd_port and mapping its ring from /proc/xen/xsd_kva.
 * In 4.17 the node database is created during that introduction, so the
 * "-D" (no domain init) mode is no use: the first request crashes it. We let
 * dom0 be introduced for real, over a ring that nobody ever writes, and every
 * test talks to the daemon over its unix socket instead.
 *
 * What is faked, exactly the symbols `nm -D --undefined-only xenstored` lists:
 *   - open("/proc/xen/xsd_port") -> memfd holding the text "1"
 *     open("/proc/xen/xsd_kva")  -> memfd of one zeroed page (dom0's ring)
 *   - xc_interface_open/close, xc_domain_getinfo (which domains "exist")
 *   - xenevtchn_*: the event fd is an eventfd nobody signals, so the daemon's
 *     poll() never wakes for ring traffic; ports are just counted up
 *   - xengnttab_*: XS_INTRODUCE of a guest maps a private anonymous page
 *
 * Knobs:
 *   FAKEXEN_DOMAINS="1,5,7" makes only dom0 and those domids exist for
 *     xc_domain_getinfo. Unset, every non-reserved domid exists.
 *   FAKEXEN_PARENT_PID=<pid>: the daemon gets SIGTERM when that process
 *     (the test runner that started it) dies, so a killed test never
 *     leaves a stray xenstored behind.
 *
 * Build (done on demand by xenstored.ts):
 *   gcc -shared -fPIC -O2 -Wall -Wextra -o fakexen.so fakexen.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

/* Domids from here up are special (DOMID_SELF, DOMID_IO ...), never real. */
#define FIRST_RESERVED_DOMID	0x7ff0U

/* The event channel port dom0's xenbus pretends to use. */
#define DOM0_XENBUS_PORT	1

/* ------------------------------------------------------------------ */
/* Lifetime: die with the test process                                 */
/* ------------------------------------------------------------------ */

__attribute__((constructor)) static void die_with_parent(void)
{
	const char *want = getenv("FAKEXEN_PARENT_PID");

	if (!want || !*want)
		return;
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	/* The parent may have died before prctl() took effect. */
	if (getppid() != (pid_t)strtol(want, NULL, 10))
		_exit(1);
}

/* ------------------------------------------------------------------ */
/* /proc/xen files read during dom0 introduction                      */
/* ------------------------------------------------------------------ */

/* An anonymous file of @size bytes starting with @len bytes of @data. */
static int anon_file(const char *name, const void *data, size_t len,
		     size_t size)
{
	int fd = memfd_create(name, MFD_CLOEXEC);

	if (fd < 0)
		return -1;
	if (ftruncate(fd, size) < 0)
		goto out_close;
	if (len && pwrite(fd, data, len, 0) != (ssize_t)len)
		goto out_close;
	return fd;

out_close:
	close(fd);
	return -1;
}

/* Returns a descriptor for a faked path, or -2 if @path is not one of ours. */
static int open_fake(const char *path)
{
	if (!path)
		return -2;
	if (!strcmp(path, "/proc/xen/xsd_port")) {
		static const char port[] = "1";

		_Static_assert(DOM0_XENBUS_PORT == 1, "port text out of sync");
		return anon_file("xsd_port", port, sizeof(port) - 1,
				 sizeof(port) - 1);
	}
	if (!strcmp(path, "/proc/xen/xsd_kva"))
		/* Zeroed ring indexes: dom0's ring is empty and stays so. */
		return anon_file("xsd_kva", NULL, 0, getpagesize());
	return -2;
}

typedef int (*open_fn)(const char *, int, ...);

/* open() has an optional third argument, present only when creating. */
static mode_t open_mode(int flags, va_list ap)
{
	if (flags & (O_CREAT | O_TMPFILE))
		return va_arg(ap, mode_t);
	return 0;
}

int open(const char *path, int flags, ...)
{
	static open_fn next_open;
	va_list ap;
	mode_t mode;
	int fd = open_fake(path);

	if (fd != -2)
		return fd;
	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	if (!next_open)
		next_open = (open_fn)dlsym(RTLD_NEXT, "open");
	return next_open(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	static open_fn next_open64;
	va_list ap;
	mode_t mode;
	int fd = open_fake(path);

	if (fd != -2)
		return fd;
	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	if (!next_open64)
		next_open64 = (open_fn)dlsym(RTLD_NEXT, "open64");
	return next_open64(path, flags, mode);
}

/* ------------------------------------------------------------------ */
/* libxenctrl                                                          */
/* ------------------------------------------------------------------ */

/* The handle is opaque to xenstored: any non-NULL pointer will do. */
static int xc_handle;

void *xc_interface_open(void *logger, void *dombuild_logger, unsigned flags)
{
	(void)logger;
	(void)dombuild_logger;
	(void)flags;
	return &xc_handle;
}

int xc_interface_close(void *xch)
{
	(void)xch;
	return 0;
}

/* Is @domid listed in FAKEXEN_DOMAINS (dom0 always is)? */
static int domain_listed(const char *list, uint32_t domid)
{
	const char *p = list;

	if (domid == 0)
		return 1;
	while (*p) {
		char *end;
		unsigned long v = strtoul(p, &end, 0);

		if (end == p)
			return 0;
		if (v == domid)
			return 1;
		p = end + strspn(end, ", ");
	}
	return 0;
}

/*
 * xc_dominfo_t in 4.17 starts with: uint32_t domid; uint32_t ssidref; then
 * a word of bit fields dying:1 crashed:1 shutdown:1 paused:1 blocked:1
 * running:1 ... xenstored reads only domid and dying/shutdown, and the
 * caller owns a whole struct, so filling the first three words is enough.
 */
#define DOMINFO_RUNNING		(1U << 5)

int xc_domain_getinfo(void *xch, uint32_t first_domid, unsigned int max_doms,
		      void *info)
{
	const char *list = getenv("FAKEXEN_DOMAINS");
	uint32_t *words = info;
	uint32_t d = first_domid;

	(void)xch;
	if (!max_doms || d >= FIRST_RESERVED_DOMID)
		return 0;
	/* Like the real call: the first existing domain at or after @first. */
	if (list && *list)
		while (d < FIRST_RESERVED_DOMID && !domain_listed(list, d))
			d++;
	if (d >= FIRST_RESERVED_DOMID)
		return 0;
	words[0] = d;
	words[1] = 0;
	words[2] = DOMINFO_RUNNING;
	return 1;
}

/* ------------------------------------------------------------------ */
/* libxenevtchn                                                        */
/* ------------------------------------------------------------------ */

struct fake_evtchn {
	int fd;		/* what xenevtchn_fd() hands to poll() */
};

/* Event channel ports are only names to xenstored; hand out fresh ones. */
static uint32_t next_port = DOM0_XENBUS_PORT + 1;

static struct fake_evtchn *evtchn_new(int fd)
{
	struct fake_evtchn *h;

	if (fd < 0)
		return NULL;
	h = malloc(sizeof(*h));
	if (!h) {
		close(fd);
		return NULL;
	}
	h->fd = fd;
	return h;
}

void *xenevtchn_open(void *logger, unsigned int flags)
{
	/* XENEVTCHN_NO_CLOEXEC is bit 0 of @flags. */
	int cloexec = (flags & 1) ? 0 : EFD_CLOEXEC;

	(void)logger;
	/* Never signalled, so the daemon never believes a ring has work. */
	return evtchn_new(eventfd(0, EFD_NONBLOCK | cloexec));
}

/* Used when xenstored restarts itself (live update) with an inherited fd. */
void *xenevtchn_fdopen(void *logger, int fd, unsigned int flags)
{
	(void)logger;
	(void)flags;
	return evtchn_new(fd);
}

int xenevtchn_close(void *xce)
{
	struct fake_evtchn *h = xce;

	if (!h)
		return 0;
	close(h->fd);
	free(h);
	return 0;
}

int xenevtchn_fd(void *xce)
{
	return ((struct fake_evtchn *)xce)->fd;
}

int xenevtchn_bind_interdomain(void *xce, uint32_t domid, uint32_t rport)
{
	(void)xce;
	(void)domid;
	(void)rport;
	return next_port++;
}

int xenevtchn_bind_virq(void *xce, unsigned int virq)
{
	(void)xce;
	(void)virq;
	return next_port++;
}

int xenevtchn_unbind(void *xce, uint32_t port)
{
	(void)xce;
	(void)port;
	return 0;
}

int xenevtchn_notify(void *xce, uint32_t port)
{
	(void)xce;
	(void)port;
	return 0;
}

/* Nothing is ever pending; say so the way the real library does. */
int xenevtchn_pending(void *xce)
{
	(void)xce;
	errno = EAGAIN;
	return -1;
}

int xenevtchn_unmask(void *xce, uint32_t port)
{
	(void)xce;
	(void)port;
	return 0;
}

/* ------------------------------------------------------------------ */
/* libxengnttab                                                        */
/* ------------------------------------------------------------------ */

static int gnttab_handle;

void *xengnttab_open(void *logger, unsigned int flags)
{
	(void)logger;
	(void)flags;
	return &gnttab_handle;
}

int xengnttab_close(void *xgt)
{
	(void)xgt;
	return 0;
}

int xengnttab_set_max_grants(void *xgt, uint32_t count)
{
	(void)xgt;
	(void)count;
	return 0;
}

/*
 * XS_INTRODUCE maps the new guest's ring through its grant. Give it a
 * private zeroed page: an empty ring the "guest" never writes to.
 */
void *xengnttab_map_grant_ref(void *xgt, uint32_t domid, uint32_t ref,
			      int prot)
{
	void *page;

	(void)xgt;
	(void)domid;
	(void)ref;
	page = mmap(NULL, getpagesize(), prot, MAP_SHARED | MAP_ANONYMOUS,
		    -1, 0);
	return page == MAP_FAILED ? NULL : page;
}

int xengnttab_unmap(void *xgt, void *addr, uint32_t count)
{
	(void)xgt;
	return munmap(addr, (size_t)count * getpagesize());
}
