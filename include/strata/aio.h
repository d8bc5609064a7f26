/*
 * Asynchronous file I/O back ends: io_uring, native (libaio) and threads.
 *
 * An engine belongs to the thread that created it (one per back end and
 * thread).  aio_co_rw() queues one request and yields; the engine's
 * completion handler (an eventfd watched by the loop, or the thread pool's
 * completion queue) wakes the coroutine with the result.  Requests queued in
 * the same loop iteration are submitted with one system call.
 */
#ifndef STRATA_AIO_H
#define STRATA_AIO_H

#include <glib.h>
#include <stdint.h>
#include <sys/uio.h>
#include "strata/coroutine.h"

typedef enum {
    AIO_THREADS = 0,
    AIO_NATIVE,
    AIO_IO_URING,
    AIO__MAX,
} AioType;

/* "threads", "native", "io_uring": QEMU's spellings for aio=. */
extern const char *const aio_type_names[AIO__MAX + 1];

typedef enum {
    AIO_OP_READ,
    AIO_OP_WRITE,
    AIO_OP_FLUSH, /* fdatasync */
} AioOp;

typedef struct AioEngine AioEngine;

/*
 * The calling thread's engine of this type, created on first use.  Fails with
 * a message naming the back end when the kernel or sandbox refuses it
 * (io_uring_queue_init -> EPERM/ENOSYS, io_setup -> EAGAIN ...).
 */
AioEngine *aio_engine_get(AioType type, GError **errp);
AioType aio_engine_type(const AioEngine *e);

/*
 * Read or write iov at offset (or flush the fd).  Returns the number of
 * bytes transferred (which may be short: at EOF for reads) or -errno.
 * For AIO_NATIVE the fd must be O_DIRECT and buffers, offset and lengths
 * aligned; the file driver guarantees it.
 */
int64_t coroutine_fn aio_co_rw(AioEngine *e, int fd, AioOp op, uint64_t offset,
                               const struct iovec *iov, int niov);

/* The best back end this process can use: io_uring if it works, else threads. */
AioType aio_default_type(void);

#endif
