/*
 * Private interface between util/aio.c (engine cache and dispatch) and the
 * three back ends (aio-threads.c, aio-linux.c, aio-uring.c).
 *
 * Every back end's engine struct starts with an AioEngine so that aio.c can
 * dispatch on the type without knowing the rest.  An engine is used only by
 * the thread that created it, so nothing here takes a lock.
 */
#ifndef STRATA_UTIL_AIO_INT_H
#define STRATA_UTIL_AIO_INT_H

#include "strata/aio.h"

struct AioEngine {
    AioType type;
};

AioEngine *aio_threads_new(GError **errp);
void aio_threads_free(AioEngine *e);
int64_t coroutine_fn aio_threads_co_rw(AioEngine *e, int fd, AioOp op,
                                       uint64_t offset,
                                       const struct iovec *iov, int niov);

AioEngine *aio_linux_new(GError **errp);
void aio_linux_free(AioEngine *e);
int64_t coroutine_fn aio_linux_co_rw(AioEngine *e, int fd, AioOp op,
                                     uint64_t offset, const struct iovec *iov,
                                     int niov);

AioEngine *aio_uring_new(GError **errp);
void aio_uring_free(AioEngine *e);
int64_t coroutine_fn aio_uring_co_rw(AioEngine *e, int fd, AioOp op,
                                     uint64_t offset, const struct iovec *iov,
                                     int niov);
/* Whether an io_uring ring can be set up in this process (no caching). */
bool aio_uring_probe(void);

#endif
