/*
 * Copy offload between two file nodes: copy_file_range(2) in the thread
 * pool (it blocks), so the kernel (or the file system: reflinks, server
 * side copies over NFS) moves the data without a user-space buffer.
 * And the writes of copies that a job makes nobody waits for (the
 * stream's): pwritev(2) in the thread pool, as a background call.
 */
#include <errno.h>
#include <unistd.h>
#include <sys/uio.h>
#include "file-int.h"
#include "strata/loop.h"
#include "strata/pool-class.h"

typedef struct CopyJob {
    int src_fd, dst_fd;
    int64_t src_off, dst_off, bytes;
} CopyJob;

static int copy_job(void *opaque)
{
    CopyJob *j = opaque;
    loff_t in = j->src_off, out = j->dst_off;
    int64_t left = j->bytes;

    while (left > 0) {
        ssize_t n = copy_file_range(j->src_fd, &in, j->dst_fd, &out,
                                    (size_t)MIN(left, (int64_t)1 << 30), 0);
        if (n < 0) {
            switch (errno) {
            case EINTR:
                continue;
            /* Not between these two files (or not on this kernel): the
             * caller reads and writes, as it would without offload. */
            case EXDEV:
            case ENOSYS:
            case EOPNOTSUPP:
            case EINVAL:
            case EBADF:
            case ETXTBSY:
            case EPERM:
                return -ENOTSUP;
            default:
                return -errno;
            }
        }
        if (n == 0) {
            /* The source ends early: reading past its end gives zeroes,
             * which the copy does not. */
            return -ENOTSUP;
        }
        left -= n;
    }
    return 0;
}

int coroutine_fn file_co_copy_range_from(BlockNode *bs, BlockChild *src,
                                         int64_t src_off, BlockChild *dst,
                                         int64_t dst_off, int64_t bytes,
                                         int read_flags, int write_flags)
{
    /* The source end is found: now the target side, down to its file. */
    return child_co_copy_range_to(src, src_off, dst, dst_off, bytes,
                                  read_flags, write_flags);
}

int coroutine_fn file_co_copy_range_to(BlockNode *bs, BlockChild *src,
                                       int64_t src_off, BlockChild *dst,
                                       int64_t dst_off, int64_t bytes,
                                       int read_flags, int write_flags)
{
    BlockNode *sbs = child_node(src);
    FileState *s = bs->opaque;
    CopyJob j;
    int ret;

    /* src is the edge the request came in on: the file node below it. */
    if (!sbs->drv || sbs->drv->co_copy_range_to != file_co_copy_range_to ||
        read_flags || write_flags) {
        return -ENOTSUP;
    }
    j = (CopyJob) {
        .src_fd = ((FileState *)sbs->opaque)->fd, .dst_fd = s->fd,
        .src_off = src_off, .dst_off = dst_off, .bytes = bytes,
    };
    if (j.src_fd < 0 || j.dst_fd < 0) {
        return -EIO;
    }
    file_grow_ahead(bs, dst_off + bytes);
    /* Before it is issued: a zero write meanwhile must not be skipped. */
    file_mark_written(s, dst_off, dst_off + bytes);
    /* Idle class for a job's background copy, normal for a copy a guest
     * request waits for (strata/pool-class.h: the caller says which). */
    ret = thread_pool_co_run_background(copy_job, &j);
    if (ret >= 0) {
        file_grew(s, dst_off + bytes);
    }
    return ret;
}

typedef struct BgWrite {
    int fd;
    uint64_t offset;
    const struct iovec *iov;
    int niov;
    int64_t ret;
} BgWrite;

static int bg_write_job(void *opaque)
{
    BgWrite *w = opaque;
    ssize_t n;

    do {
        n = pwritev(w->fd, w->iov, w->niov, (off_t)w->offset);
    } while (n < 0 && errno == EINTR);
    w->ret = n < 0 ? -errno : n;
    return 0;
}

int64_t coroutine_fn file_co_write_background(int fd, uint64_t offset,
                                              const struct iovec *iov,
                                              int niov)
{
    BgWrite w = { .fd = fd, .offset = offset, .iov = iov, .niov = niov };

    thread_pool_co_run_background(bg_write_job, &w);
    return w.ret;
}
