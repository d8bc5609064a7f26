/*
 * The request path: everything between a parent's request and a driver's
 * callback that every driver would otherwise repeat.
 *
 *   - in-flight counting, so that drain can wait for requests;
 *   - alignment: requests that are not multiples of the node's
 *     request_alignment (O_DIRECT files), or whose buffers are not aligned
 *     to min_mem_alignment, go through an aligned bounce buffer; unaligned
 *     writes read the partial head and tail blocks first (read-modify-write)
 *     and are serialised against overlapping requests meanwhile;
 *   - splitting to max_transfer;
 *   - zero detection (detect-zeroes), the zero-write fallback, FUA by flush;
 *   - statistics.
 *
 * Aligned requests on aligned buffers go straight to the driver: that is the
 * hot path and it allocates nothing.
 */
#include <errno.h>
#include <string.h>
#include "block-int.h"
#include "strata/debug-event.h"

typedef struct TrackedReq {
    int64_t offset, bytes;
    bool serialising;
    CoQueue waiters;
} TrackedReq;

static void track_begin(BlockNode *bs, TrackedReq *r, int64_t offset,
                        int64_t bytes, bool serialising)
{
    r->offset = offset;
    r->bytes = bytes;
    r->serialising = serialising;
    co_queue_init(&r->waiters);
    bs->tracked_requests = g_list_append(bs->tracked_requests, r);
}

static void track_end(BlockNode *bs, TrackedReq *r)
{
    bs->tracked_requests = g_list_remove(bs->tracked_requests, r);
    co_queue_restart_all(&r->waiters);
}

/*
 * Wait for earlier overlapping requests when either side is serialising.
 * Only earlier requests are waited for, so two requests never wait for each
 * other.
 */
static void coroutine_fn wait_serialising(BlockNode *bs, TrackedReq *self)
{
retry:
    for (GList *l = bs->tracked_requests; l && l->data != self; l = l->next) {
        TrackedReq *r = l->data;
        if ((r->serialising || self->serialising) &&
            r->offset < self->offset + self->bytes &&
            self->offset < r->offset + r->bytes) {
            co_queue_wait(&r->waiters);
            goto retry;
        }
    }
}

static bool have_serialising(BlockNode *bs)
{
    for (GList *l = bs->tracked_requests; l; l = l->next) {
        if (((TrackedReq *)l->data)->serialising) {
            return true;
        }
    }
    return false;
}

static bool qiov_mem_aligned(BlockNode *bs, IOVec *qiov, size_t qoff,
                             int64_t bytes)
{
    uint32_t a = bs->bl.min_mem_alignment;
    if (a <= 1) {
        return true;
    }
    size_t skip = qoff;
    int64_t left = bytes;
    for (int i = 0; i < qiov->niov && left > 0; i++) {
        size_t len = qiov->iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        uintptr_t base = (uintptr_t)qiov->iov[i].iov_base + skip;
        size_t n = MIN(len - skip, (size_t)left);
        if ((base % a) || (n % a && (int64_t)n != left)) {
            return false;
        }
        left -= n;
        skip = 0;
    }
    return true;
}

static int64_t max_chunk(BlockNode *bs)
{
    uint64_t mt = bs->bl.max_transfer;
    if (!mt || mt > (1ULL << 30)) {
        mt = 1ULL << 30;
    }
    uint32_t a = bs->bl.request_alignment;
    return (int64_t)MAX(mt / a * a, a);
}

/* ---- Reads ---- */

static int coroutine_fn driver_preadv(BlockNode *bs, int64_t offset,
                                      int64_t bytes, IOVec *qiov, size_t qoff,
                                      int flags)
{
    if (!bs->drv->co_preadv) {
        return -ENOTSUP;
    }
    int64_t chunk = max_chunk(bs);
    while (bytes > 0) {
        int64_t n = MIN(bytes, chunk);
        int ret = bs->drv->co_preadv(bs, offset, n, qiov, qoff, flags);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += n;
        bytes -= n;
    }
    return 0;
}

int coroutine_fn node_co_preadv_node(BlockNode *bs, int64_t offset,
                                     int64_t bytes, IOVec *qiov,
                                     size_t qiov_offset, int flags)
{
    if (offset < 0 || bytes < 0) {
        return -EIO;
    }
    if (bytes == 0) {
        return 0;
    }
    node_inc_in_flight(bs);
    uint32_t align = bs->bl.request_alignment;
    int ret;
    TrackedReq tr;
    bool tracked = false;
    if (have_serialising(bs)) {
        track_begin(bs, &tr, offset, bytes, false);
        tracked = true;
        wait_serialising(bs, &tr);
    }

    if (offset % align == 0 && bytes % align == 0 &&
        qiov_mem_aligned(bs, qiov, qiov_offset, bytes)) {
        ret = driver_preadv(bs, offset, bytes, qiov, qiov_offset, flags);
    } else {
        /* Read the covering aligned range into a bounce buffer. */
        int64_t start = ROUND_DOWN(offset, align);
        int64_t end = ROUND_UP(offset + bytes, align);
        size_t len = (size_t)(end - start);
        void *buf = aligned_alloc_buf(MAX(bs->bl.opt_mem_alignment, 1), len);
        IOVec bq;
        iovec_init_buf(&bq, buf, len);
        ret = driver_preadv(bs, start, (int64_t)len, &bq, 0, flags);
        if (ret >= 0) {
            iov_from_buf(qiov->iov, qiov->niov, qiov_offset,
                         (char *)buf + (offset - start), (size_t)bytes);
        }
        iovec_destroy(&bq);
        aligned_free(buf);
    }
    if (ret >= 0) {
        bs->rd_bytes += bytes;
        bs->rd_ops++;
    }
    if (tracked) {
        track_end(bs, &tr);
    }
    node_dec_in_flight(bs);
    return ret < 0 ? ret : 0;
}

int coroutine_fn child_co_preadv(BlockChild *c, int64_t offset, int64_t bytes,
                                 IOVec *qiov, size_t qiov_offset, int flags)
{
    return node_co_preadv_node(c->bs, offset, bytes, qiov, qiov_offset, flags);
}

int coroutine_fn child_co_pread(BlockChild *c, int64_t offset, int64_t bytes,
                                void *buf, int flags)
{
    IOVec qiov;
    iovec_init_buf(&qiov, buf, (size_t)bytes);
    int ret = child_co_preadv(c, offset, bytes, &qiov, 0, flags);
    iovec_destroy(&qiov);
    return ret;
}

/* ---- Writes ---- */


static int coroutine_fn driver_pwritev(BlockNode *bs, int64_t offset,
                                       int64_t bytes, IOVec *qiov, size_t qoff,
                                       int flags)
{
    if (!bs->drv->co_pwritev) {
        return -ENOTSUP;
    }
    /* WRITE_UNCHANGED describes the request, not a driver feature: keep it. */
    int drv_flags = (flags & bs->drv->supported_write_flags) |
                    (flags & REQ_WRITE_UNCHANGED);
    int64_t chunk = max_chunk(bs);
    while (bytes > 0) {
        int64_t n = MIN(bytes, chunk);
        int ret = bs->drv->co_pwritev(bs, offset, n, qiov, qoff, drv_flags);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += n;
        bytes -= n;
    }
    if ((flags & REQ_FUA) && !(bs->drv->supported_write_flags & REQ_FUA)) {
        return node_co_flush(bs); /* all the way down, not just this driver */
    }
    return 0;
}

static int coroutine_fn node_co_pwrite_zeroes_node(BlockNode *bs,
                                                   int64_t offset,
                                                   int64_t bytes, int flags);

static int coroutine_fn pwritev_aligned_or_rmw(BlockNode *bs, int64_t offset,
                                               int64_t bytes, IOVec *qiov,
                                               size_t qoff, int flags)
{
    uint32_t align = bs->bl.request_alignment;
    if (offset % align == 0 && bytes % align == 0 &&
        qiov_mem_aligned(bs, qiov, qoff, bytes)) {
        return driver_pwritev(bs, offset, bytes, qiov, qoff, flags);
    }

    int64_t start = ROUND_DOWN(offset, align);
    int64_t end = ROUND_UP(offset + bytes, align);
    size_t len = (size_t)(end - start);
    void *buf = aligned_alloc_buf(MAX(bs->bl.opt_mem_alignment, 1), len);
    IOVec bq;
    iovec_init_buf(&bq, buf, len);
    int ret = 0;

    /* Partial head and tail blocks: read what is there first. */
    if (offset != start) {
        IOVec hq;
        iovec_init_buf(&hq, buf, align);
        ret = driver_preadv(bs, start, align, &hq, 0, 0);
        iovec_destroy(&hq);
    }
    if (ret >= 0 && (offset + bytes) != end &&
        (end - align > start || offset == start)) {
        IOVec tq;
        iovec_init_buf(&tq, (char *)buf + len - align, align);
        ret = driver_preadv(bs, end - align, align, &tq, 0, 0);
        iovec_destroy(&tq);
    }
    if (ret >= 0) {
        iov_to_buf(qiov->iov, qiov->niov, qoff, (char *)buf + (offset - start),
                   (size_t)bytes);
        ret = driver_pwritev(bs, start, (int64_t)len, &bq, 0, flags);
    }
    iovec_destroy(&bq);
    aligned_free(buf);
    return ret;
}

int coroutine_fn node_co_pwritev_node(BlockNode *bs, int64_t offset,
                                      int64_t bytes, IOVec *qiov,
                                      size_t qiov_offset, int flags)
{
    if (offset < 0 || bytes < 0) {
        return -EIO;
    }
    if (bs->read_only) {
        return -EPERM;
    }
    if (bytes == 0) {
        return 0;
    }
    if (bs->detect_zeroes != DETECT_ZEROES_OFF && qiov) {
        IOVec part;
        iovec_init(&part, qiov->niov);
        iovec_concat(&part, qiov, qiov_offset, (size_t)bytes);
        bool zero = iov_is_zero(part.iov, part.niov);
        iovec_destroy(&part);
        if (zero) {
            int zflags = flags & REQ_FUA;
            if (bs->detect_zeroes == DETECT_ZEROES_UNMAP) {
                zflags |= REQ_MAY_UNMAP;
            }
            return node_co_pwrite_zeroes_node(bs, offset, bytes, zflags);
        }
    }

    node_inc_in_flight(bs);
    uint32_t align = bs->bl.request_alignment;
    bool rmw = (offset % align) || (bytes % align);
    /*
     * Every write is tracked, so that a later read-modify-write waits for it
     * instead of reading stale data.  An RMW owns its whole aligned range
     * until it has written it back.
     */
    TrackedReq tr;
    int64_t start = ROUND_DOWN(offset, align);
    track_begin(bs, &tr, start, ROUND_UP(offset + bytes, align) - start, rmw);
    wait_serialising(bs, &tr);
    int ret = pwritev_aligned_or_rmw(bs, offset, bytes, qiov, qiov_offset, flags);
    if (ret >= 0) {
        bs->wr_bytes += bytes;
        bs->wr_ops++;
    }
    track_end(bs, &tr);
    node_dec_in_flight(bs);
    return ret < 0 ? ret : 0;
}

static bool child_may_write(BlockChild *c, int flags)
{
    if (c->perm & BLK_PERM_WRITE) {
        return true;
    }
    return (flags & REQ_WRITE_UNCHANGED) && (c->perm & BLK_PERM_WRITE_UNCHANGED);
}

int coroutine_fn child_co_pwritev(BlockChild *c, int64_t offset, int64_t bytes,
                                  IOVec *qiov, size_t qiov_offset, int flags)
{
    if (!child_may_write(c, flags)) {
        return -EPERM;
    }
    return node_co_pwritev_node(c->bs, offset, bytes, qiov, qiov_offset, flags);
}

int coroutine_fn child_co_pwrite(BlockChild *c, int64_t offset, int64_t bytes,
                                 const void *buf, int flags)
{
    IOVec qiov;
    iovec_init_buf(&qiov, (void *)buf, (size_t)bytes);
    int ret = child_co_pwritev(c, offset, bytes, &qiov, 0, flags);
    iovec_destroy(&qiov);
    return ret;
}

/* ---- Zeroes ---- */

static int coroutine_fn write_zero_buffers(BlockNode *bs, int64_t offset,
                                           int64_t bytes, int flags)
{
    int64_t chunk = MIN(bytes, (int64_t)MiB);
    void *buf = aligned_alloc_buf(MAX(bs->bl.opt_mem_alignment, 1), (size_t)chunk);
    memset(buf, 0, (size_t)chunk);
    int ret = 0;
    while (bytes > 0 && ret >= 0) {
        int64_t n = MIN(bytes, chunk);
        IOVec q;
        iovec_init_buf(&q, buf, (size_t)n);
        ret = pwritev_aligned_or_rmw(bs, offset, n, &q, 0, flags & REQ_FUA);
        iovec_destroy(&q);
        offset += n;
        bytes -= n;
    }
    aligned_free(buf);
    return ret;
}

static int coroutine_fn node_co_pwrite_zeroes_node(BlockNode *bs,
                                                   int64_t offset,
                                                   int64_t bytes, int flags)
{
    if (offset < 0 || bytes < 0) {
        return -EIO;
    }
    if (bs->read_only) {
        return -EPERM;
    }
    if (bytes == 0) {
        return 0;
    }
    node_inc_in_flight(bs);
    uint32_t align = MAX(bs->bl.request_alignment, bs->bl.pwrite_zeroes_alignment);
    int64_t head = MIN(bytes, (int64_t)(ROUND_UP(offset, align) - offset));
    int64_t tail = (bytes - head) % align;
    int64_t mid = bytes - head - tail;
    int ret = 0;
    TrackedReq tr;
    int64_t start = ROUND_DOWN(offset, bs->bl.request_alignment);
    track_begin(bs, &tr, start,
                ROUND_UP(offset + bytes, bs->bl.request_alignment) - start,
                head || tail);
    wait_serialising(bs, &tr);

    /* Unaligned pieces are written as data; the middle as zeroes. */
    if (head) {
        ret = write_zero_buffers(bs, offset, head, flags);
    }
    if (ret >= 0 && mid) {
        ret = -ENOTSUP;
        if (bs->drv->co_pwrite_zeroes) {
            int64_t done = 0;
            uint64_t mz = bs->bl.max_pwrite_zeroes ? bs->bl.max_pwrite_zeroes
                                                  : (uint64_t)1 << 62;
            mz = MAX(mz / align * align, align);
            do {
                int64_t n = MIN(mid - done, (int64_t)mz);
                ret = bs->drv->co_pwrite_zeroes(bs, offset + head + done, n,
                                                flags & bs->drv->supported_zero_flags);
                done += n;
            } while (ret >= 0 && done < mid);
        }
        if (ret == -ENOTSUP && !(flags & REQ_NO_FALLBACK)) {
            ret = write_zero_buffers(bs, offset + head, mid, flags);
        } else if (ret >= 0 && (flags & REQ_FUA) &&
                   !(bs->drv->supported_zero_flags & REQ_FUA)) {
            /* The driver wrote zeroes but cannot make them durable itself. */
            ret = node_co_flush(bs);
        }
    }
    if (ret >= 0 && tail) {
        ret = write_zero_buffers(bs, offset + head + mid, tail, flags);
    }
    track_end(bs, &tr);
    if (ret >= 0) {
        bs->wr_bytes += bytes;
        bs->wr_ops++;
    }
    node_dec_in_flight(bs);
    return ret < 0 ? ret : 0;
}

int coroutine_fn child_co_pwrite_zeroes(BlockChild *c, int64_t offset,
                                        int64_t bytes, int flags)
{
    if (!child_may_write(c, flags)) {
        return -EPERM;
    }
    /*
     * A node's discard policy governs what it passes down, as in QEMU: a
     * request from a user keeps may-unmap; a node without discard=unmap
     * asks its children for real zeroes.
     */
    if (c->klass->parent_is_node && !c->bs->discard_unmap) {
        flags &= ~REQ_MAY_UNMAP;
    }
    return node_co_pwrite_zeroes_node(c->bs, offset, bytes, flags);
}

/* ---- Discard ---- */

int coroutine_fn child_co_pdiscard(BlockChild *c, int64_t offset,
                                   int64_t bytes)
{
    BlockNode *bs = c->bs;
    if (offset < 0 || bytes < 0) {
        return -EIO;
    }
    if (!(c->perm & BLK_PERM_WRITE)) {
        return -EPERM;
    }
    if (bs->read_only) {
        return -EPERM;
    }
    /* discard=ignore (the default) makes discard a successful no-op. */
    if (!bs->discard_unmap || !bs->drv->co_pdiscard || bytes == 0) {
        return 0;
    }
    /*
     * Unaligned edges go to the driver too, as QEMU sends them: the file
     * driver punches them (zeroing partial blocks), a format may ignore
     * what it cannot free.
     */
    uint32_t align = MAX(bs->bl.request_alignment, bs->bl.pdiscard_alignment);
    int64_t start = offset;
    int64_t end = offset + bytes;
    node_inc_in_flight(bs);
    TrackedReq tr;
    track_begin(bs, &tr, start, end - start, false);
    wait_serialising(bs, &tr);
    int ret = 0;
    uint64_t md = bs->bl.max_pdiscard ? bs->bl.max_pdiscard : (uint64_t)1 << 62;
    md = MAX(md / align * align, align);
    for (int64_t o = start; o < end && ret >= 0;) {
        int64_t n = MIN(end - o, (int64_t)md);
        ret = bs->drv->co_pdiscard(bs, o, n);
        o += n;
    }
    track_end(bs, &tr);
    node_dec_in_flight(bs);
    /* Like QEMU: a driver that cannot discard this range is not an error. */
    return ret == -ENOTSUP ? 0 : ret;
}

/* ---- Flush ---- */

static int coroutine_fn driver_flush(BlockNode *bs)
{
    int ret = 0;
    if (bs->file) {
        child_debug_event(bs->file, BLKDBG_FLUSH_TO_OS);
    }
    if (bs->drv->co_flush_to_os) {
        ret = bs->drv->co_flush_to_os(bs);
    }
    if (ret >= 0 && !(bs->open_flags & NODE_O_NO_FLUSH)) {
        if (bs->file) {
            child_debug_event(bs->file, BLKDBG_FLUSH_TO_DISK);
        }
        if (bs->drv->co_flush_to_disk) {
            ret = bs->drv->co_flush_to_disk(bs);
        }
    }
    return ret;
}

int coroutine_fn node_co_flush(BlockNode *bs)
{
    node_inc_in_flight(bs);
    bs->flush_ops++;
    int ret = driver_flush(bs);
    /* Then everything this node's data lives on. */
    for (GList *l = bs->children; l && ret >= 0; l = l->next) {
        BlockChild *c = l->data;
        if (!(c->role & CHILD_ROLE_COW)) {
            ret = node_co_flush(c->bs);
        }
    }
    node_dec_in_flight(bs);
    return ret;
}

/* ---- Truncate ---- */

int coroutine_fn child_co_truncate(BlockChild *c, int64_t offset, bool exact,
                                   int prealloc, GError **errp)
{
    BlockNode *bs = c->bs;
    if (offset < 0) {
        error_setg(errp, "Image size cannot be negative");
        return -EINVAL;
    }
    if (!(c->perm & BLK_PERM_RESIZE)) {
        error_setg(errp, "Resizing node '%s' needs the resize permission, "
                   "which %s does not hold", bs->node_name,
                   "this user");
        return -EPERM;
    }
    if (bs->read_only) {
        error_setg(errp, "Image is read-only");
        return -EACCES;
    }
    if (!bs->drv->co_truncate) {
        error_setg(errp, "Image format driver does not support resize");
        return -ENOTSUP;
    }
    node_inc_in_flight(bs);
    int ret = bs->drv->co_truncate(bs, offset, exact, (PreallocMode)prealloc, errp);
    node_invalidate_length(bs);
    node_dec_in_flight(bs);
    return ret;
}
