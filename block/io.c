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
#include <inttypes.h>
#include <string.h>
#include "block-int.h"
#include "strata/debug-event.h"
#include "strata/dirty-bitmap.h"
#include "strata/block-events.h"
#include "strata/pool-class.h"

/*
 * A request in flight on a node, on its issuer's stack (node_co_req_begin
 * allocates its own): the list link is embedded, so tracking a request
 * allocates nothing.
 */
typedef struct TrackedReq {
    int64_t offset, bytes;
    bool serialising;
    bool waiting;        /* in wait_serialising, behind another request */
    Coroutine *co;       /* its issuer */
    CoQueue waiters;
    GList link;          /* in bs->tracked_requests, data = this request */
} TrackedReq;

/*
 * Every read and write passes here twice: the list operations are
 * g_queue_push_tail_link and g_queue_unlink written out, which the
 * compiler inlines (the library calls, with their argument checks, cost
 * 57 instructions a request; docs/performance.md, "Request tracking").
 */
static inline void track_begin(BlockNode *bs, TrackedReq *r, int64_t offset,
                               int64_t bytes, bool serialising)
{
    GQueue *q = &bs->tracked_requests;

    r->offset = offset;
    r->bytes = bytes;
    r->serialising = serialising;
    r->waiting = false;
    r->co = co_self();
    r->waiters.head = r->waiters.tail = NULL;     /* co_queue_init */
    r->link.data = r;
    r->link.next = NULL;
    r->link.prev = q->tail;
    if (q->tail) {
        q->tail->next = &r->link;
    } else {
        q->head = &r->link;
    }
    q->tail = &r->link;
    q->length++;
    bs->serialising_requests += serialising;
}

static inline void track_end(BlockNode *bs, TrackedReq *r)
{
    GQueue *q = &bs->tracked_requests;

    if (r->link.prev) {
        r->link.prev->next = r->link.next;
    } else {
        q->head = r->link.next;
    }
    if (r->link.next) {
        r->link.next->prev = r->link.prev;
    } else {
        q->tail = r->link.prev;
    }
    q->length--;
    bs->serialising_requests -= r->serialising;
    if (r->waiters.head) {
        co_queue_restart_all(&r->waiters);
    }
}

/*
 * Wait for overlapping requests when either side is serialising, as QEMU
 * does: a request that is itself waiting is passed over (it will wait for
 * this one in turn when it wakes up, if it must), so two requests never
 * wait for each other, and a request stopped behind another does not hold
 * up the ones that come after it (QEMU iotest 077 depends on that order).
 *
 * The request waited for may be a job's background copy whose pool call
 * runs at idle class (a copy offload into the target of the pre-7.0
 * fleecing recipe, serialising): its issuer's frame is promoted, so that
 * the wait does not last until the pool's watchdog (strata/pool-class.h).
 */
static void coroutine_fn wait_serialising_slow(BlockNode *bs,
                                               TrackedReq *self)
{
retry:
    if (!self->serialising && bs->serialising_requests == 0) {
        return;
    }
    for (GList *l = bs->tracked_requests.head; l; l = l->next) {
        TrackedReq *r = l->data;
        if (r != self && !r->waiting &&
            (r->serialising || self->serialising) &&
            r->offset < self->offset + self->bytes &&
            self->offset < r->offset + r->bytes) {
            self->waiting = true;
            pool_background_promote_co(r->co);
            co_queue_wait(&r->waiters);
            self->waiting = false;
            goto retry;
        }
    }
}

static inline void coroutine_fn wait_serialising(BlockNode *bs,
                                                 TrackedReq *self)
{
    /* The common case, nothing serialising anywhere: nothing to wait for. */
    if (self->serialising || bs->serialising_requests > 0) {
        wait_serialising_slow(bs, self);
    }
}

/*
 * A REQ_SERIALISING write owns whole clusters of the node (QEMU's
 * tracked_request_set_serialising with bdrv_get_cluster_size): a read of
 * another part of a cluster it allocates waits for it too.  Only such
 * writes ask, so the driver's get_info is off the hot path.
 */
static void serialising_range(BlockNode *bs, int64_t offset, int64_t bytes,
                              int64_t *start, int64_t *len)
{
    BlockDriverInfo bdi;
    int64_t align = MAX(bs->bl.request_alignment, 1);

    if (node_get_info(bs, &bdi) == 0 && bdi.cluster_size > align) {
        align = bdi.cluster_size;
    }
    *start = ROUND_DOWN(offset, align);
    *len = ROUND_UP(offset + bytes, align) - *start;
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

/*
 * The request flags a node honours: what its driver always supports, plus
 * what it found out at open (a filter or raw supports FUA only if its
 * child does, as in QEMU).
 */
static int write_flags(const BlockNode *bs)
{
    return bs->drv->supported_write_flags | bs->supported_write_flags;
}

static int zero_flags(const BlockNode *bs)
{
    return bs->drv->supported_zero_flags | bs->supported_zero_flags;
}

bool node_discards_unmap(const BlockNode *bs)
{
    return bs->discard_unmap;
}

bool node_can_write_zeroes_with_unmap(const BlockNode *bs)
{
    return bs->discard_unmap && (zero_flags(bs) & REQ_MAY_UNMAP);
}

/*
 * Write generations, QEMU's write_gen/flushed_gen: every finished write,
 * zero write, discard or truncate of a node counts one; a flush that
 * succeeds records the count it started at.  A node whose count has not
 * moved since then is clean: its own flush to disk (and blkdebug's
 * flush_to_disk event) is skipped, which is what keeps writethrough mode at
 * one fdatasync per write however many nodes the flush passes through.
 *
 * They live in the node (write_gen, flushed_gen), zero for a new node, and
 * are only touched in the node's home thread.  (They were kept in a table
 * by node address whose entries outlived their nodes: it grew with every
 * node ever written, and under libFuzzer every input looked like a leak.)
 */
static void write_finished(BlockNode *bs)
{
    bs->write_gen++;
}

/*
 * A write that ended past the node's end made it longer (a file grows), as
 * QEMU's write_req_finish sets total_sectors: the cached length follows,
 * in whole sectors, and so do the node's dirty bitmaps.  Only the home
 * thread runs this; queries read the cache from the main thread, hence the
 * atomic compare-and-swap that only ever raises a known length (an
 * unknown one, -1, is computed afresh by the next reader).  Nodes above
 * derive their length from this one's: they compute it again.
 */
static void write_grew(BlockNode *bs, int64_t offset, int64_t bytes)
{
    int64_t end = ROUND_UP(offset + bytes, 512);
    int64_t cur = __atomic_load_n(&bs->total_bytes, __ATOMIC_RELAXED);

    if (cur < 0 || end <= cur) {
        return;
    }
    while (cur >= 0 && end > cur) {
        if (__atomic_compare_exchange_n(&bs->total_bytes, &cur, end, false,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            break;
        }
    }
    for (GList *l = bs->parents; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->klass->parent_is_node) {
            node_invalidate_length(c->opaque);
        }
    }
    if (bs->dirty_bitmaps) {
        node_dirty_bitmaps_truncate(bs, end);
    }
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
    /*
     * Every read is tracked, not only those that find a serialising
     * request already here: a serialising write that comes later must
     * see the reads it overlaps.  That is what makes the pre-7.0 fleecing
     * recipe safe: a backup reader's read of the target that fell through
     * to the source (the target's backing file) finishes before the
     * copy-before-write of a guest write lets the guest change the source
     * (jobs/block-copy.c marks such copies REQ_SERIALISING).
     */
    TrackedReq tr;
    track_begin(bs, &tr, offset, bytes, false);
    wait_serialising(bs, &tr);

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
    track_end(bs, &tr);
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


static int coroutine_fn fua_flush(BlockNode *bs);

static int coroutine_fn driver_pwritev(BlockNode *bs, int64_t offset,
                                       int64_t bytes, IOVec *qiov, size_t qoff,
                                       int flags)
{
    if (!bs->drv->co_pwritev) {
        return -ENOTSUP;
    }
    /* WRITE_UNCHANGED describes the request, not a driver feature: keep it. */
    int drv_flags = (flags & write_flags(bs)) | (flags & REQ_WRITE_UNCHANGED);
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
    if ((flags & REQ_FUA) && !(write_flags(bs) & REQ_FUA)) {
        return fua_flush(bs);
    }
    return 0;
}

static int coroutine_fn node_co_pwrite_zeroes_node(BlockNode *bs,
                                                   int64_t offset,
                                                   int64_t bytes, int flags);

/*
 * An event of the request path itself: it goes to the node handling the
 * request (QEMU's bdrv_debug_event(bs)), not to a child.
 */
static void coroutine_fn node_debug_event(BlockNode *bs, BlkdebugEvent event)
{
    if (bs->drv->debug_event) {
        bs->drv->debug_event(bs, event);
    }
}

/*
 * The driver write of an aligned request, between QEMU's pwritev and
 * pwritev_done events (the latter also after a failure), unless the write
 * stands in for a zero write the driver could not do itself.
 */
static int coroutine_fn driver_pwritev_signalled(BlockNode *bs, int64_t offset,
                                                 int64_t bytes, IOVec *qiov,
                                                 size_t qoff, int flags,
                                                 bool events)
{
    if (events) {
        node_debug_event(bs, BLKDBG_PWRITEV);
    }
    int ret = driver_pwritev(bs, offset, bytes, qiov, qoff, flags);
    if (events) {
        node_debug_event(bs, BLKDBG_PWRITEV_DONE);
    }
    return ret;
}

static int coroutine_fn pwritev_aligned_or_rmw(BlockNode *bs, int64_t offset,
                                               int64_t bytes, IOVec *qiov,
                                               size_t qoff, int flags,
                                               bool events)
{
    uint32_t align = bs->bl.request_alignment;
    if (offset % align == 0 && bytes % align == 0 &&
        qiov_mem_aligned(bs, qiov, qoff, bytes)) {
        return driver_pwritev_signalled(bs, offset, bytes, qiov, qoff, flags,
                                        events);
    }

    int64_t start = ROUND_DOWN(offset, align);
    int64_t end = ROUND_UP(offset + bytes, align);
    size_t len = (size_t)(end - start);
    void *buf = aligned_alloc_buf(MAX(bs->bl.opt_mem_alignment, 1), len);
    IOVec bq;
    iovec_init_buf(&bq, buf, len);
    int ret = 0;
    bool head = offset != start;
    bool tail = offset + bytes != end;
    /*
     * Partial head and tail blocks are read first.  When the padded
     * request is one block, or two with both ends partial, both are read
     * at once, as QEMU does; the blkdebug events around the reads are
     * QEMU's (bdrv_padding_rmw_read), signalled on this node, so that
     * breakpoints on them stop the request where QEMU's would stop.
     */
    bool merged = (head || tail) &&
                  (len == align || (len == 2 * (size_t)align && head && tail));
    if (head || merged) {
        size_t n = merged ? len : align;
        IOVec hq;
        if (head) {
            node_debug_event(bs, BLKDBG_PWRITEV_RMW_HEAD);
        }
        if (merged && tail) {
            node_debug_event(bs, BLKDBG_PWRITEV_RMW_TAIL);
        }
        iovec_init_buf(&hq, buf, n);
        ret = driver_preadv(bs, start, (int64_t)n, &hq, 0, 0);
        iovec_destroy(&hq);
        if (ret >= 0 && head) {
            node_debug_event(bs, BLKDBG_PWRITEV_RMW_AFTER_HEAD);
        }
        if (ret >= 0 && merged && tail) {
            node_debug_event(bs, BLKDBG_PWRITEV_RMW_AFTER_TAIL);
        }
    }
    if (ret >= 0 && tail && !merged) {
        IOVec tq;
        node_debug_event(bs, BLKDBG_PWRITEV_RMW_TAIL);
        iovec_init_buf(&tq, (char *)buf + len - align, align);
        ret = driver_preadv(bs, end - align, align, &tq, 0, 0);
        iovec_destroy(&tq);
        if (ret >= 0) {
            node_debug_event(bs, BLKDBG_PWRITEV_RMW_AFTER_TAIL);
        }
    }
    if (ret >= 0) {
        iov_to_buf(qiov->iov, qiov->niov, qoff, (char *)buf + (offset - start),
                   (size_t)bytes);
        ret = driver_pwritev_signalled(bs, start, (int64_t)len, &bq, 0, flags,
                                       events);
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
    if (bytes == 0 && (flags & REQ_WRITE_COMPRESSED)) {
        /*
         * An empty compressed write tells the driver that the compressed
         * image is complete (QEMU's convention: qcow2 pads its file).
         */
        return bs->drv->co_pwritev_compressed ?
               bs->drv->co_pwritev_compressed(bs, offset, 0, qiov,
                                              qiov_offset) : -ENOTSUP;
    }
    if (bytes == 0) {
        return 0;
    }
    /* A bitmap that cannot record would miss the write (QEMU: EPERM). */
    if (bs->dirty_bitmaps && node_has_readonly_bitmaps(bs)) {
        return -EPERM;
    }
    if (bs->detect_zeroes != DETECT_ZEROES_OFF && qiov) {
        IOVec part;
        iovec_init(&part, qiov->niov);
        iovec_concat(&part, qiov, qiov_offset, (size_t)bytes);
        bool zero = iov_is_zero(part.iov, part.niov);
        iovec_destroy(&part);
        if (zero) {
            int zflags = flags & (REQ_FUA | REQ_SERIALISING);
            if (bs->detect_zeroes == DETECT_ZEROES_UNMAP) {
                zflags |= REQ_MAY_UNMAP;
            }
            return node_co_pwrite_zeroes_node(bs, offset, bytes, zflags);
        }
    }

    if (flags & REQ_WRITE_COMPRESSED) {
        /* Whole clusters, no read-modify-write: the driver checks. */
        int ret = -ENOTSUP;
        if (bs->drv->co_pwritev_compressed) {
            TrackedReq tr;
            int64_t start = offset, len = bytes;
            node_inc_in_flight(bs);
            if (flags & REQ_SERIALISING) {
                serialising_range(bs, offset, bytes, &start, &len);
            }
            track_begin(bs, &tr, start, len, flags & REQ_SERIALISING);
            wait_serialising(bs, &tr);
            ret = bs->drv->co_pwritev_compressed(bs, offset, bytes, qiov,
                                                 qiov_offset);
            if (ret >= 0) {
                write_grew(bs, offset, bytes);
            }
            node_note_write(bs, offset, bytes, false);
            node_set_dirty(bs, offset, bytes);
            track_end(bs, &tr);
            if (ret >= 0) {
                bs->wr_bytes += bytes;
                bs->wr_ops++;
            }
            node_dec_in_flight(bs);
        }
        return ret < 0 ? ret : 0;
    }

    node_inc_in_flight(bs);
    uint32_t align = bs->bl.request_alignment;
    bool rmw = (offset % align) || (bytes % align);
    /*
     * Every write is tracked, so that a later read-modify-write waits for it
     * instead of reading stale data.  An RMW owns its whole aligned range
     * until it has written it back; a REQ_SERIALISING write its clusters.
     */
    TrackedReq tr;
    int64_t start = ROUND_DOWN(offset, align);
    int64_t len = ROUND_UP(offset + bytes, align) - start;
    if (flags & REQ_SERIALISING) {
        serialising_range(bs, offset, bytes, &start, &len);
    }
    track_begin(bs, &tr, start, len, rmw || (flags & REQ_SERIALISING));
    wait_serialising(bs, &tr);
    int ret = pwritev_aligned_or_rmw(bs, offset, bytes, qiov, qiov_offset,
                                     flags, true);
    if (ret >= 0) {
        bs->wr_bytes += bytes;
        bs->wr_ops++;
        write_grew(bs, offset, bytes);
    }
    /* Marked even on failure, as QEMU: part of it may have been written. */
    node_note_write(bs, offset, bytes, false);
    node_set_dirty(bs, offset, bytes);
    write_finished(bs);
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
                                           int64_t bytes, int flags,
                                           bool events)
{
    int64_t chunk = MIN(bytes, (int64_t)MiB);
    void *buf = aligned_alloc_buf(MAX(bs->bl.opt_mem_alignment, 1), (size_t)chunk);
    memset(buf, 0, (size_t)chunk);
    int ret = 0;
    while (bytes > 0 && ret >= 0) {
        int64_t n = MIN(bytes, chunk);
        IOVec q;
        iovec_init_buf(&q, buf, (size_t)n);
        ret = pwritev_aligned_or_rmw(bs, offset, n, &q, 0, flags & REQ_FUA,
                                     events);
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
    if (bs->dirty_bitmaps && node_has_readonly_bitmaps(bs)) {
        return -EPERM;
    }
    node_inc_in_flight(bs);
    uint32_t align = MAX(bs->bl.request_alignment, bs->bl.pwrite_zeroes_alignment);
    int64_t head = MIN(bytes, (int64_t)(ROUND_UP(offset, align) - offset));
    int64_t tail = (bytes - head) % align;
    int64_t mid = bytes - head - tail;
    int ret = 0;
    TrackedReq tr;
    int64_t start = ROUND_DOWN(offset, bs->bl.request_alignment);
    int64_t len = ROUND_UP(offset + bytes, bs->bl.request_alignment) - start;
    if (flags & REQ_SERIALISING) {
        serialising_range(bs, offset, bytes, &start, &len);
    }
    track_begin(bs, &tr, start, len,
                head || tail || (flags & REQ_SERIALISING));
    wait_serialising(bs, &tr);

    /* Unaligned pieces are written as data; the middle as zeroes. */
    if (head) {
        ret = write_zero_buffers(bs, offset, head, flags, true);
    }
    if (ret >= 0 && mid) {
        ret = -ENOTSUP;
        node_debug_event(bs, BLKDBG_PWRITEV_ZERO);
        if (bs->drv->co_pwrite_zeroes) {
            int64_t done = 0;
            uint64_t mz = bs->bl.max_pwrite_zeroes ? bs->bl.max_pwrite_zeroes
                                                  : (uint64_t)1 << 62;
            mz = MAX(mz / align * align, align);
            do {
                int64_t n = MIN(mid - done, (int64_t)mz);
                ret = bs->drv->co_pwrite_zeroes(bs, offset + head + done, n,
                                                flags & zero_flags(bs));
                done += n;
            } while (ret >= 0 && done < mid);
        }
        if (ret == -ENOTSUP && !(flags & REQ_NO_FALLBACK)) {
            ret = write_zero_buffers(bs, offset + head, mid, flags, false);
        } else if (ret >= 0 && (flags & REQ_FUA) &&
                   !(zero_flags(bs) & REQ_FUA)) {
            /* The driver wrote zeroes but cannot make them durable itself. */
            ret = fua_flush(bs);
        }
        node_debug_event(bs, BLKDBG_PWRITEV_DONE);
    }
    if (ret >= 0 && tail) {
        ret = write_zero_buffers(bs, offset + head + mid, tail, flags, true);
    }
    if (ret >= 0) {
        write_grew(bs, offset, bytes);
    }
    node_note_write(bs, offset, bytes, false);
    node_set_dirty(bs, offset, bytes);
    write_finished(bs);
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
    if (bs->dirty_bitmaps && node_has_readonly_bitmaps(bs)) {
        return -EPERM;
    }
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
    /*
     * Pieces as QEMU cuts them: an unaligned head in steps that reach the
     * request alignment and then the discard alignment, whole aligned runs
     * (at most md, which is a multiple of the alignment, so boundaries stay
     * aligned whatever the alignment is), and the unaligned tail alone.
     * A driver below then sees whole clusters wherever QEMU's would.
     */
    uint32_t ralign = MAX(bs->bl.request_alignment, 1);
    int64_t head = start % align;
    int64_t tail = end % align;
    for (int64_t o = start; o < end;) {
        int64_t n = end - o;
        if (head) {
            n = MIN(n, (int64_t)align - head);
            if (n % ralign) {
                n %= ralign;
            }
            head = (head + n) % align;
        } else if (tail) {
            if (n > (int64_t)align) {
                n -= tail;
            } else if (tail % ralign && tail > (int64_t)ralign) {
                tail %= ralign;
                n -= tail;
            }
        }
        n = MIN(n, (int64_t)md);
        ret = bs->drv->co_pdiscard(bs, o, n);
        node_note_discard(bs, n, ret);
        if (ret < 0 && ret != -ENOTSUP) {
            break;
        }
        ret = 0;
        o += n;
    }
    node_note_write(bs, offset, bytes, true);
    node_set_dirty(bs, offset, bytes);
    write_finished(bs);
    track_end(bs, &tr);
    node_dec_in_flight(bs);
    /* Like QEMU: a driver that cannot discard this range is not an error. */
    return ret == -ENOTSUP ? 0 : ret;
}

bool node_can_unallocate(const BlockNode *bs)
{
    return bs->drv->co_unallocate != NULL;
}

int coroutine_fn child_co_unallocate(BlockChild *c, int64_t offset,
                                     int64_t bytes,
                                     const DirtyBitmap *unless_dirty)
{
    BlockNode *bs = c->bs;
    if (offset < 0 || bytes < 0) {
        return -EIO;
    }
    if (!(c->perm & BLK_PERM_WRITE) || bs->read_only) {
        return -EPERM;
    }
    if (!bs->drv->co_unallocate) {
        return -ENOTSUP;
    }
    if (bs->dirty_bitmaps && node_has_readonly_bitmaps(bs)) {
        return -EPERM;
    }
    if (bytes == 0) {
        return 0;
    }
    node_inc_in_flight(bs);
    /*
     * Serialising: it waits for the writes in flight over the range (which
     * mark the bitmap before they end), and later ones wait for it, so a
     * guest write is never undone by dropping its clusters.
     */
    TrackedReq tr;
    track_begin(bs, &tr, offset, bytes, true);
    wait_serialising(bs, &tr);
    int ret;
    if (unless_dirty &&
        dirty_bitmap_next_dirty(unless_dirty, offset, bytes) >= 0) {
        ret = -EAGAIN;
    } else {
        ret = bs->drv->co_unallocate(bs, offset, bytes);
        node_note_write(bs, offset, bytes, true);
        /*
         * What reads return may change (a backing file below): as a write,
         * unless the caller vouches that the backing file holds the same.
         */
        if (!unless_dirty) {
            node_set_dirty(bs, offset, bytes);
        }
        write_finished(bs);
    }
    track_end(bs, &tr);
    node_dec_in_flight(bs);
    return ret;
}

/* ---- Flush ---- */

/*
 * FUA where the driver lacks it, emulated as QEMU does: a flush of this
 * node, all the way down.  It runs before this write is counted, so the
 * node itself still looks clean and only the nodes below, which counted
 * their part, flush to disk: one fdatasync, and a blkdebug child sees the
 * flush_to_os event of its parent (and no flush_to_disk, as in QEMU).
 * A node with no children has nobody below to count the write; QEMU skips
 * its flush then and relies on the one at close; we flush it directly.
 */
static int coroutine_fn fua_flush(BlockNode *bs)
{
    int ret = 0;

    if (bs->children) {
        return node_co_flush(bs);
    }
    if (bs->drv->co_flush_to_os) {
        ret = bs->drv->co_flush_to_os(bs);
    }
    if (ret >= 0 && !(bs->open_flags & NODE_O_NO_FLUSH) &&
        bs->drv->co_flush_to_disk) {
        ret = bs->drv->co_flush_to_disk(bs);
    }
    return ret;
}

/*
 * QEMU's order: write back to the OS (even with cache.no-flush), then to
 * the disk unless cache.no-flush or nothing was written since the last
 * flush, each announced to the primary child (a blkdebug node arms its
 * flush rules on these events), then every child this node may write to.
 * A failing step of the node itself skips its children; among children
 * every one is flushed and the first error returned.
 */
int coroutine_fn node_co_flush(BlockNode *bs)
{
    uint64_t gen;
    int ret = 0;

    node_inc_in_flight(bs);
    /* Nothing can have been written through a read-only node. */
    if (bs->read_only) {
        goto out;
    }
    gen = bs->write_gen;
    bs->flush_ops++;
    if (bs->drv->co_flush) {
        ret = bs->drv->co_flush(bs);
        goto done;
    }
    if (bs->file) {
        child_debug_event(bs->file, BLKDBG_FLUSH_TO_OS);
    }
    if (bs->drv->co_flush_to_os) {
        ret = bs->drv->co_flush_to_os(bs);
        if (ret < 0) {
            goto out;
        }
    }
    if (!(bs->open_flags & NODE_O_NO_FLUSH) && bs->flushed_gen != gen) {
        if (bs->file) {
            child_debug_event(bs->file, BLKDBG_FLUSH_TO_DISK);
        }
        if (bs->drv->co_flush_to_disk) {
            ret = bs->drv->co_flush_to_disk(bs);
            if (ret < 0) {
                goto out;
            }
        }
    }
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED)) {
            int r = node_co_flush(c->bs);
            if (ret == 0) {
                ret = r;
            }
        }
    }
done:
    if (ret == 0 && gen > bs->flushed_gen) {
        bs->flushed_gen = gen;
    }
out:
    node_dec_in_flight(bs);
    return ret;
}

/* ---- Truncate ---- */

/* QEMU's BDRV_MAX_LENGTH: the largest length, in whole GiB-aligned units. */
#define NODE_MAX_LENGTH ((int64_t)(INT64_MAX / GiB * GiB))

int coroutine_fn child_co_truncate(BlockChild *c, int64_t offset, bool exact,
                                   int prealloc, GError **errp)
{
    BlockNode *bs = c->bs;
    if (offset < 0) {
        error_setg(errp, "Image size cannot be negative");
        return -EINVAL;
    }
    if (offset > NODE_MAX_LENGTH) {
        error_setg(errp, "offset(%" PRId64 ") exceeds maximum(%" PRId64 ")",
                   offset, NODE_MAX_LENGTH);
        return -EIO;
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
    write_finished(bs);
    node_invalidate_length(bs);
    if (ret >= 0 && bs->dirty_bitmaps) {
        int64_t len = node_getlength(bs);
        node_dirty_bitmaps_truncate(bs, len >= 0 ? len : offset);
    }
    node_dec_in_flight(bs);
    return ret;
}

/*
 * A drain waits for the requests in flight on bs (block/drain.c): their
 * issuers' background frames are promoted, as wait_serialising promotes
 * the request it waits for, so that a request whose pool call runs at
 * idle class is not held up until the pool's watchdog.  In bs's home
 * thread only: the tracked list and the issuers' frames are its own.
 */
void node_promote_requests(BlockNode *bs)
{
    for (GList *l = bs->tracked_requests.head; l; l = l->next) {
        pool_background_promote_co(((TrackedReq *)l->data)->co);
    }
}

/* ---- Requests that reach a driver by another path (copy-range.c) ---- */

TrackedReq *coroutine_fn node_co_req_begin(BlockNode *bs, int64_t offset,
                                           int64_t bytes, int flags)
{
    TrackedReq *r = g_new(TrackedReq, 1);
    uint32_t align = MAX(bs->bl.request_alignment, 1);
    int64_t start = ROUND_DOWN(offset, align);
    int64_t len = ROUND_UP(offset + bytes, align) - start;

    node_inc_in_flight(bs);
    if (flags & REQ_SERIALISING) {
        serialising_range(bs, offset, bytes, &start, &len);
    }
    track_begin(bs, r, start, len, flags & REQ_SERIALISING);
    wait_serialising(bs, r);
    return r;
}

void node_co_req_end(BlockNode *bs, TrackedReq *r, int64_t offset,
                     int64_t bytes, bool write, int ret)
{
    if (write) {
        if (ret >= 0) {
            bs->wr_bytes += bytes;
            bs->wr_ops++;
            write_grew(bs, offset, bytes);
        }
        node_note_write(bs, offset, bytes, false);
        node_set_dirty(bs, offset, bytes);
        write_finished(bs);
    } else if (ret >= 0) {
        bs->rd_bytes += bytes;
        bs->rd_ops++;
    }
    track_end(bs, r);
    g_free(r);
    node_dec_in_flight(bs);
}
