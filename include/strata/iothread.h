/*
 * IOThreads: a thread running a StrataLoop of its own (QEMU's iothread
 * object).  The parameters are kept as QEMU's object has them.  poll-max-ns
 * caps the NBD server's busy wait for the exports in the thread (0: none,
 * nbd/spin.c); the others are recorded and reported, not acted on.
 */
#ifndef STRATA_IOTHREAD_H
#define STRATA_IOTHREAD_H

#include <stdint.h>
#include "strata/loop.h"

typedef struct IOThread IOThread;

typedef struct IOThreadParams {
    int64_t poll_max_ns, poll_grow, poll_shrink;
    int64_t aio_max_batch, thread_pool_min, thread_pool_max;
} IOThreadParams;

/* QEMU 7.2's defaults (poll-max-ns 32768 on POSIX, pool up to 64). */
void iothread_params_default(IOThreadParams *p);

/*
 * Start the thread ("IO name") and wait until its loop runs.  Checks the
 * parameters first, with QEMU's messages.
 */
IOThread *iothread_new(const char *name, const IOThreadParams *p,
                       GError **errp);
/* Stop the loop, join the thread, free. */
void iothread_free(IOThread *t);

StrataLoop *iothread_loop(IOThread *t);
int64_t iothread_thread_id(const IOThread *t);   /* the kernel's tid */
const IOThreadParams *iothread_params(const IOThread *t);
/* Change parameters of a running thread (qom-set); checked as at creation. */
bool iothread_set_params(IOThread *t, const IOThreadParams *p, GError **errp);
/* Store parameters without checking them (QEMU keeps a refused value). */
void iothread_force_params(IOThread *t, const IOThreadParams *p);
bool iothread_params_check(const IOThreadParams *p, GError **errp);
/* The field of a property ("poll-max-ns", ...), or NULL for another name. */
int64_t *iothread_param_field(IOThreadParams *p, const char *name);

/*
 * The poll-max-ns of the IOThread running the calling thread (qom-set
 * changes it at once), or -1 if the caller is not an IOThread's thread.
 */
int64_t iothread_self_poll_max_ns(void);

/* Run fn(opaque) in the thread's loop and wait for it (from the main loop). */
void iothread_run_sync(IOThread *t, LoopFunc *fn, void *opaque);

#endif
