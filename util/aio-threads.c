/*
 * aio=threads: each request runs preadv/pwritev/fdatasync in a worker of the
 * shared thread pool while the coroutine yields.
 *
 * The worker loops until the whole vector is transferred, the file ends (a
 * read returns 0) or the system call fails, so a short result means EOF for
 * a read, and an error after partial progress is reported as the error.  The engine has no state: the struct
 * exists only so that aio.c can cache and dispatch it like the others.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>
#include <glib.h>
#include "strata/loop.h"
#include "aio-int.h"

typedef struct {
    int fd;
    AioOp op;
    uint64_t offset;
    const struct iovec *iov;
    int niov;
    int64_t ret;
} ThreadReq;

static ssize_t rw_once(ThreadReq *r, const struct iovec *iov, int niov,
                       uint64_t offset)
{
    ssize_t n;
    do {
        if (r->op == AIO_OP_READ) {
            n = preadv(r->fd, iov, niov, (off_t)offset);
        } else {
            n = pwritev(r->fd, iov, niov, (off_t)offset);
        }
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

/* Runs in a worker thread. */
static int thread_req_run(void *opaque)
{
    ThreadReq *r = opaque;

    if (r->op == AIO_OP_FLUSH) {
        int n;
        do {
            n = fdatasync(r->fd);
        } while (n < 0 && errno == EINTR);
        r->ret = n < 0 ? -errno : 0;
        return 0;
    }

    size_t total = 0;
    for (int i = 0; i < r->niov; i++) {
        total += r->iov[i].iov_len;
    }
    ssize_t n = rw_once(r, r->iov, r->niov, r->offset);
    if (n < 0 || (size_t)n == total || n == 0) {
        r->ret = n;
        return 0;
    }

    /*
     * Short transfer: continue on a private copy of the remaining vector
     * (the caller's is const).  Rare, so the allocation does not matter.
     */
    struct iovec *rest = g_new(struct iovec, r->niov);
    memcpy(rest, r->iov, sizeof(*rest) * (size_t)r->niov);
    struct iovec *cur = rest;
    int left = r->niov;
    size_t done = 0;
    while (n > 0) {
        done += (size_t)n;
        if (done == total) {
            break;
        }
        size_t skip = (size_t)n;
        while (skip >= cur->iov_len) {
            skip -= cur->iov_len;
            cur++;
            left--;
        }
        cur->iov_base = (char *)cur->iov_base + skip;
        cur->iov_len -= skip;
        n = rw_once(r, cur, left, r->offset + done);
    }
    g_free(rest);
    /*
     * An error after partial progress is reported as the error: a short
     * read would otherwise pass for EOF and a short write hide ENOSPC.
     */
    r->ret = n < 0 ? n : (int64_t)done;
    return 0;
}

AioEngine *aio_threads_new(GError **errp)
{
    return g_new0(AioEngine, 1);
}

void aio_threads_free(AioEngine *e)
{
    g_free(e);
}

int64_t coroutine_fn aio_threads_co_rw(AioEngine *e, int fd, AioOp op,
                                       uint64_t offset,
                                       const struct iovec *iov, int niov)
{
    ThreadReq r = {
        .fd = fd, .op = op, .offset = offset, .iov = iov, .niov = niov,
        .ret = -EINPROGRESS,
    };
    thread_pool_co_run(thread_req_run, &r);
    return r.ret;
}
