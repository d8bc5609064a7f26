/*
 * The per-thread engine cache, the choice of the default back end, and the
 * dispatch of aio_co_rw() to the back end.
 *
 * Engines are created lazily, one per type and thread, and looked up through
 * a thread-local array so that the hot path costs one load.  A GPrivate with
 * a destructor holds the same array so that an exiting thread (an iothread
 * being deleted) closes its rings, contexts and eventfds instead of leaking
 * them; the main thread's engines live until the process exits.
 */
#include <errno.h>
#include <limits.h>
#include <glib.h>
#include "strata/aio.h"
#include "strata/error.h"
#include "aio-int.h"

const char *const aio_type_names[AIO__MAX + 1] = {
    [AIO_THREADS] = "threads",
    [AIO_NATIVE] = "native",
    [AIO_IO_URING] = "io_uring",
    [AIO__MAX] = NULL,
};

typedef struct {
    AioEngine *engine[AIO__MAX];
} ThreadEngines;

static __thread ThreadEngines *thread_engines;

static void thread_engines_free(gpointer data)
{
    ThreadEngines *te = data;
    for (int i = 0; i < AIO__MAX; i++) {
        AioEngine *e = te->engine[i];
        if (!e) {
            continue;
        }
        switch (e->type) {
        case AIO_THREADS:
            aio_threads_free(e);
            break;
        case AIO_NATIVE:
            aio_linux_free(e);
            break;
        case AIO_IO_URING:
            aio_uring_free(e);
            break;
        default:
            g_assert_not_reached();
        }
    }
    g_free(te);
    /* Later TLS destructors of this thread must not see freed engines. */
    thread_engines = NULL;
}

static GPrivate thread_engines_key = G_PRIVATE_INIT(thread_engines_free);

AioEngine *aio_engine_get(AioType type, GError **errp)
{
    if ((unsigned)type >= AIO__MAX) {
        error_setg(errp, "Invalid AIO type %d", (int)type);
        return NULL;
    }
    if (thread_engines && thread_engines->engine[type]) {
        return thread_engines->engine[type];
    }

    AioEngine *e;
    switch (type) {
    case AIO_THREADS:
        e = aio_threads_new(errp);
        break;
    case AIO_NATIVE:
        e = aio_linux_new(errp);
        break;
    case AIO_IO_URING:
        e = aio_uring_new(errp);
        break;
    default:
        g_assert_not_reached();
    }
    if (!e) {
        return NULL;
    }
    e->type = type;
    if (!thread_engines) {
        thread_engines = g_new0(ThreadEngines, 1);
        g_private_set(&thread_engines_key, thread_engines);
    }
    thread_engines->engine[type] = e;
    return e;
}

AioType aio_engine_type(const AioEngine *e)
{
    return e->type;
}

AioType aio_default_type(void)
{
    static gsize cached;

    /* 0 means not probed yet, so the stored value is the type plus one. */
    if (g_once_init_enter(&cached)) {
        AioType t = aio_uring_probe() ? AIO_IO_URING : AIO_THREADS;
        g_once_init_leave(&cached, (gsize)t + 1);
    }
    return (AioType)(cached - 1);
}

int64_t coroutine_fn aio_co_rw(AioEngine *e, int fd, AioOp op, uint64_t offset,
                               const struct iovec *iov, int niov)
{
    g_assert(in_coroutine());
    if ((unsigned)op > AIO_OP_FLUSH) {
        return -EINVAL;
    }
    /* The kernel would say the same, but only after a submission. */
    if (op != AIO_OP_FLUSH &&
        (niov < 0 || niov > IOV_MAX || (niov > 0 && !iov) ||
         offset > (uint64_t)INT64_MAX)) {
        return -EINVAL;
    }
    if (fd < 0) {
        return -EBADF;
    }

    switch (e->type) {
    case AIO_IO_URING:
        return aio_uring_co_rw(e, fd, op, offset, iov, niov);
    case AIO_NATIVE:
        return aio_linux_co_rw(e, fd, op, offset, iov, niov);
    case AIO_THREADS:
        return aio_threads_co_rw(e, fd, op, offset, iov, niov);
    default:
        g_assert_not_reached();
    }
}
