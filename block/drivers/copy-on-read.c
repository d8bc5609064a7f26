/*
 * copy-on-read: a filter whose reads copy what they fetch from the
 * backing chain of its file into the file (strata/copy-on-read.h).
 * QEMU 7.2's "copy-on-read" driver with its options (file, bottom), its
 * permissions and its messages.
 *
 * QEMU does the copy in its request path (BDRV_REQ_COPY_ON_READ); here
 * the filter does it itself, with QEMU's rules: whole clusters of the
 * file, each piece the file does not allocate read through the chain and
 * written back with WRITE_UNCHANGED (as zero writes when the piece reads
 * as zeroes), so that images end up laid out as QEMU lays them out.
 *
 * A copy must not overwrite a write that came after its read, so copies
 * and the writes that pass through the filter wait for each other where
 * they overlap (QEMU serialises the copy's request in the file for the
 * same reason).  Writes that reach the file beside the filter are not
 * seen: the filter shares WRITE_UNCHANGED only, as QEMU's does, unless
 * its parents share WRITE.
 *
 * Background copies (REQ_PREFETCH reads: the stream job) write into the
 * file one copy at a time, in pieces of COR_PREFETCH_PIECE, while the
 * writes of the filter's parents go straight on.  The file runs the
 * writes it is given in turn (io_uring hands the page-cache writes of one
 * file to its workers one after the other; a thread pool's writes take
 * the inode lock in turn), so every write already issued stands in front
 * of a guest's: with the stream's 16 chunks of 1 MiB in flight, a 4 KiB
 * guest write through the filter waited for up to 16 MiB of copy (p50
 * 5 ms, p99 25-50 ms under load, where QEMU's stream, one 512 KiB chunk
 * at a time, leaves it at 0.25 ms).  Queued here instead, the copies
 * leave at most one piece in front of a guest write; the stream still
 * reads ahead (docs/performance.md, "Guest writes during a stream").
 * Copies made for a parent's read are that parent's own I/O and are not
 * held back.
 *
 * Background copies write at normal class, through the file's engine
 * like every other write.  Running them at idle class (pwritev in the
 * thread pool inside the stream task's frame, promoted when a parent's
 * request came in) was tried and measured: it did not change the guest's
 * write latency and cost the job more CPU (docs/performance.md, "Guest
 * writes during a stream: measures that can decide").
 *
 * Only while someone writes through the filter: after a parent's write
 * the next COR_GUEST_WINDOW background copies go one at a time; with no
 * parent writing they go straight to the file, all at once (a stream of
 * an idle disk runs at full width).  A count, not a clock: the first
 * guest write after a quiet spell may still find the copies already in
 * the file in front of it, every later one at most a piece.
 *
 * Beyond QEMU, x-strata-discard-backing: what was copied is dropped from
 * the backing images at the filter's flushes (cor-discard.c).
 */
#include <errno.h>
#include <string.h>

#include "strata/block-driver.h"
#include "strata/copy-on-read.h"
#include "strata/debug-event.h"
#include "cor-discard.h"

/* QEMU's limit on one copy's buffer (MAX_BOUNCE_BUFFER). */
#define COR_MAX_BOUNCE ((int64_t)16 * 1024 * 1024)

/*
 * Copies up to this size take their buffer from a free list: a stream
 * runs one copy per engine chunk (1 MiB, 16 at a time), and a fresh
 * 1 MiB buffer per chunk is an mmap, 256 page faults and an munmap
 * (glibc's mmap threshold) -- measurable against a page-cache copy.
 */
#define COR_POOL_BUF ((size_t)1024 * 1024)
#define COR_POOL_ALIGN ((size_t)4096)
#define COR_POOL_MAX 16

/*
 * One write of a background copy: half of QEMU's stream chunk
 * (STREAM_CHUNK), which is what a guest write waits for at most under
 * QEMU's stream.  Measured under load (docs/performance.md): 512 KiB left
 * the guest's p99 level with qsd's, 256 KiB mostly below it; the price,
 * when nobody else writes, is up to 30% more stream time and CPU.
 */
#define COR_PREFETCH_PIECE ((int64_t)256 * 1024)

/* Background copies that stay serialised after a parent's write. */
#define COR_GUEST_WINDOW 64

typedef struct CorReq {
    int64_t offset, bytes;
    bool copy;          /* a copy (else a write passing through) */
    bool waiting;
    CoQueue waiters;
} CorReq;

typedef struct CorState {
    BlockNode *bottom;  /* NULL: copy whatever the file does not hold */
    char *owner;        /* freeze owner: this node */
    bool chain_frozen;
    GQueue reqs;        /* CorReq*, copies and writes in flight */
    int copies;         /* copies among them */
    void *pool[COR_POOL_MAX]; /* free COR_POOL_BUF buffers */
    int npool;
    bool bg_writing;    /* a background copy is writing into the file */
    CoQueue bg_queue;   /* background copies waiting for their turn */
    int bg_waiting;     /* how many */
    int guest_window;   /* copies still serialised since a parent wrote */
    CorDiscard *discard; /* x-strata-discard-backing (cor-discard.h) */
} CorState;

extern const BlockDriver bdrv_copy_on_read;

bool node_is_cor_filter(const BlockNode *bs)
{
    return bs && bs->drv == &bdrv_copy_on_read;
}

/*
 * QEMU's freeze is a flag, not a counter: a chain another user froze
 * cannot be frozen again, and QEMU says which link is in the way.
 */
static bool chain_check_unfrozen(BlockNode *top, BlockNode *bottom,
                                 GError **errp)
{
    for (BlockNode *bs = top; bs && bs != bottom;) {
        BlockChild *c = chain_child(bs);
        if (!c) {
            break;
        }
        if (child_frozen_count(c) > 0) {
            error_setg(errp, "Cannot change '%s' link from '%s' to '%s'",
                       c->name, bs->node_name, c->bs->node_name);
            return false;
        }
        bs = c->bs;
    }
    return true;
}

static bool cor_open_bottom(BlockNode *bs, char *bottom_name, GError **errp);
static void cor_release_bottom(BlockNode *bs);

static int cor_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    CorState *s = bs->opaque;
    char *bottom_name = NULL;
    bool discard_backing = false;
    (void)flags;

    g_queue_init(&s->reqs);
    co_queue_init(&s->bg_queue);
    bs->file = node_open_child(bs, options, "file",
                               CHILD_ROLE_FILTERED | CHILD_ROLE_PRIMARY,
                               false, errp);
    if (!bs->file) {
        return -EINVAL;
    }
    BlockNode *file = bs->file->bs;
    bs->supported_write_flags =
        REQ_WRITE_UNCHANGED |
        (REQ_FUA & (file->supported_write_flags |
                    file->drv->supported_write_flags));
    bs->supported_zero_flags =
        REQ_WRITE_UNCHANGED |
        ((REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK) &
         (file->supported_zero_flags | file->drv->supported_zero_flags));

    if (!opts_take_str(options, "bottom", &bottom_name, errp) ||
        !opts_take_bool(options, "x-strata-discard-backing",
                        &discard_backing, errp)) {
        g_free(bottom_name);
        return -EINVAL;
    }
    if (bottom_name && !cor_open_bottom(bs, bottom_name, errp)) {
        return -EINVAL;
    }
    if (discard_backing) {
        s->discard = cor_discard_open(bs, s->bottom, errp);
        if (!s->discard) {
            /* A failed open is not closed: release the bottom here. */
            cor_release_bottom(bs);
            return -EINVAL;
        }
    }
    return 0;
}

/* "bottom": the chain down to it is frozen (consumes bottom_name). */
static bool cor_open_bottom(BlockNode *bs, char *bottom_name, GError **errp)
{
    CorState *s = bs->opaque;
    BlockNode *bottom = node_find(bottom_name);
    if (!bottom) {
        error_setg(errp, "Bottom node '%s' not found", bottom_name);
        g_free(bottom_name);
        return false;
    }
    if (bottom->drv->is_filter) {
        error_setg(errp, "Bottom node '%s' is a filter", bottom_name);
        g_free(bottom_name);
        return false;
    }
    g_free(bottom_name);
    s->owner = g_strdup_printf("copy-on-read node '%s'", bs->node_name);
    if (!chain_check_unfrozen(bs, bottom, errp) ||
        !chain_freeze(bs, bottom, s->owner, errp)) {
        g_free(s->owner);
        s->owner = NULL;
        return false;
    }
    s->chain_frozen = true;
    node_ref(bottom);
    s->bottom = bottom;
    return true;
}

static void cor_unfreeze(BlockNode *bs)
{
    CorState *s = bs->opaque;
    if (s->chain_frozen) {
        s->chain_frozen = false;
        chain_unfreeze(bs, s->bottom, s->owner);
    }
}

static void cor_release_bottom(BlockNode *bs)
{
    CorState *s = bs->opaque;
    cor_unfreeze(bs);
    if (s->bottom) {
        node_unref(s->bottom);
        s->bottom = NULL;
    }
    g_free(s->owner);
    s->owner = NULL;
}

static void *cor_buf_get(CorState *s, size_t align, size_t size)
{
    if (size > COR_POOL_BUF || align > COR_POOL_ALIGN) {
        return aligned_alloc_buf(align, size);
    }
    if (s->npool > 0) {
        return s->pool[--s->npool];
    }
    return aligned_alloc_buf(COR_POOL_ALIGN, COR_POOL_BUF);
}

static void cor_buf_put(CorState *s, void *buf, size_t align, size_t size)
{
    if (size > COR_POOL_BUF || align > COR_POOL_ALIGN ||
        s->npool == COR_POOL_MAX) {
        aligned_free(buf);
        return;
    }
    s->pool[s->npool++] = buf;
}

static void cor_close(BlockNode *bs)
{
    CorState *s = bs->opaque;
    while (s->npool > 0) {
        aligned_free(s->pool[--s->npool]);
    }
    cor_discard_close(s->discard);
    s->discard = NULL;
    cor_release_bottom(bs);
}

/*
 * QEMU's: what the parents take and share on the data passes through;
 * the filter itself rewrites unchanged data and lets anyone do so.
 */
#define COR_PERM_PASSTHROUGH \
    (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | BLK_PERM_RESIZE)

static void cor_child_perm(BlockNode *bs, BlockChild *c, unsigned role,
                           const ReopenState *rs, uint64_t perm,
                           uint64_t shared, uint64_t *nperm,
                           uint64_t *nshared)
{
    (void)bs;
    (void)role;
    (void)rs;
    if (cor_discard_is_edge(c)) {
        /* Only the filter drops data there; the chain reads it. */
        *nperm = BLK_PERM_WRITE;
        *nshared = BLK_PERM_ALL;
        return;
    }
    *nperm = (perm & COR_PERM_PASSTHROUGH) | BLK_PERM_WRITE_UNCHANGED;
    *nshared = (shared & COR_PERM_PASSTHROUGH) | BLK_PERM_WRITE_UNCHANGED;
}

static int64_t cor_getlength(BlockNode *bs)
{
    return node_getlength(bs->file->bs);
}

/* ---- Serialisation of copies against writes ---- */

static void coroutine_fn cor_req_begin(CorState *s, CorReq *r,
                                       int64_t offset, int64_t bytes,
                                       bool copy)
{
    r->offset = offset;
    r->bytes = bytes;
    r->copy = copy;
    r->waiting = false;
    co_queue_init(&r->waiters);
    g_queue_push_tail(&s->reqs, r);
    s->copies += copy;
    if (!copy) {
        s->guest_window = COR_GUEST_WINDOW;
    }
    /*
     * Wait for overlapping requests when one of the two is a copy.  A
     * request that waits itself is passed over, so that two never wait for
     * each other (the same rule as the request path's serialisation).
     */
    if (!copy && s->copies == 0) {
        return;
    }
retry:
    for (GList *l = s->reqs.head; l; l = l->next) {
        CorReq *o = l->data;
        if (o != r && !o->waiting && (o->copy || copy) &&
            o->offset < offset + bytes && offset < o->offset + o->bytes) {
            r->waiting = true;
            co_queue_wait(&o->waiters);
            r->waiting = false;
            goto retry;
        }
    }
}

static void cor_req_end(CorState *s, CorReq *r)
{
    g_queue_remove(&s->reqs, r);
    s->copies -= r->copy;
    co_queue_restart_all(&r->waiters);
}

/* ---- Reads ---- */

/*
 * Write what a background copy read: after the background copy that
 * writes now, if any, and in pieces (see the top of the file).  The turn
 * is kept across the pieces of one copy, so that the clusters of two
 * copies are not allocated in turns.
 */
static int coroutine_fn cor_write_background(CorState *s, BlockChild *file,
                                             int64_t offset, int64_t bytes,
                                             const uint8_t *buf, int64_t cs)
{
    /* Whole clusters in every piece: a partial one would copy-on-write. */
    int64_t piece = MAX(ROUND_DOWN(COR_PREFETCH_PIECE, cs), cs);
    int ret = 0;

    if (s->guest_window == 0 && !s->bg_writing && s->bg_waiting == 0) {
        return child_co_pwrite(file, offset, bytes, buf, REQ_WRITE_UNCHANGED);
    }
    if (s->guest_window > 0) {
        s->guest_window--;
    }
    while (s->bg_writing) {
        s->bg_waiting++;
        co_queue_wait(&s->bg_queue);
        s->bg_waiting--;
    }
    s->bg_writing = true;
    for (int64_t done = 0; done < bytes && ret >= 0;) {
        int64_t n = MIN(piece, bytes - done);
        ret = child_co_pwrite(file, offset + done, n, buf + done,
                              REQ_WRITE_UNCHANGED);
        done += n;
    }
    s->bg_writing = false;
    co_queue_next(&s->bg_queue);
    return ret;
}

int cor_filter_background_waiting(BlockNode *cor)
{
    g_return_val_if_fail(node_is_cor_filter(cor), 0);
    return ((CorState *)cor->opaque)->bg_waiting;
}

/* The cluster size copies are rounded to (QEMU's bdrv_get_cluster_size). */
static int64_t cor_cluster_size(BlockNode *file)
{
    BlockDriverInfo bdi;
    if (node_get_info(file, &bdi) == 0 && bdi.cluster_size > 0) {
        return bdi.cluster_size;
    }
    return MAX(file->bl.request_alignment, 1);
}

/*
 * Read [offset, offset + bytes) through the file, copying into the file
 * what it does not allocate, in whole clusters (QEMU's
 * bdrv_co_do_copy_on_readv).  qiov NULL or prefetch: copy only.
 */
static int coroutine_fn cor_copy(BlockNode *bs, int64_t offset,
                                 int64_t bytes, IOVec *qiov, size_t qoff,
                                 bool prefetch)
{
    CorState *s = bs->opaque;
    BlockChild *file = bs->file;
    int64_t len = node_getlength(file->bs);
    if (len < 0) {
        return (int)len;
    }
    int64_t cs = cor_cluster_size(file->bs);
    int64_t start = ROUND_DOWN(offset, cs);
    int64_t end = MIN(ROUND_UP(offset + bytes, cs), len);
    uint64_t mt = file->bs->bl.max_transfer;
    int64_t max_piece = (mt && mt < (uint64_t)COR_MAX_BOUNCE) ? (int64_t)mt
                                                              : COR_MAX_BOUNCE;
    void *buf = NULL;
    size_t buf_align = MAX(file->bs->bl.opt_mem_alignment, 1);
    size_t buf_size = (size_t)MIN(end - start, max_piece);
    int ret = 0;
    CorReq req;

    if (end <= start) {
        /* Past the end of the file: nothing to copy, zeroes to read. */
        if (qiov && !prefetch) {
            iov_memset(qiov->iov, qiov->niov, qoff, 0, (size_t)bytes);
        }
        return 0;
    }
    cor_req_begin(s, &req, start, end - start, true);
    for (int64_t cur = start; cur < end;) {
        int64_t pnum;
        int alloc = node_co_is_allocated(file->bs, cur,
                                         MIN(end - cur, max_piece), &pnum);
        if (alloc < 0 || pnum <= 0) {
            /* Copy anyway: the read will tell a better error if any. */
            pnum = MIN(end - cur, max_piece);
            alloc = 0;
        }
        /* The part of this piece the caller asked for. */
        int64_t want_lo = MAX(cur, offset);
        int64_t want_hi = MIN(cur + pnum, offset + bytes);

        if (!alloc) {
            if (!buf) {
                buf = cor_buf_get(s, buf_align, buf_size);
            }
            ret = child_co_pread(file, cur, pnum, buf, 0);
            if (ret < 0) {
                break;
            }
            child_debug_event(file, BLKDBG_COR_WRITE);
            if (buffer_is_zero(buf, (size_t)pnum)) {
                ret = child_co_pwrite_zeroes(file, cur, pnum,
                                             REQ_WRITE_UNCHANGED);
            } else if (prefetch) {
                ret = cor_write_background(s, file, cur, pnum, buf, cs);
            } else {
                ret = child_co_pwrite(file, cur, pnum, buf,
                                      REQ_WRITE_UNCHANGED);
            }
            if (ret < 0) {
                break;
            }
            if (s->discard) {
                cor_discard_note(s->discard, cur, pnum);
            }
            if (qiov && !prefetch && want_hi > want_lo) {
                iov_from_buf(qiov->iov, qiov->niov,
                             qoff + (size_t)(want_lo - offset),
                             (char *)buf + (want_lo - cur),
                             (size_t)(want_hi - want_lo));
            }
        } else if (qiov && !prefetch && want_hi > want_lo) {
            ret = child_co_preadv(file, want_lo, want_hi - want_lo, qiov,
                                  qoff + (size_t)(want_lo - offset), 0);
            if (ret < 0) {
                break;
            }
        }
        cur += pnum;
    }
    /* A read past the end of the file reads zeroes. */
    if (ret >= 0 && qiov && !prefetch && offset + bytes > end) {
        int64_t from = MAX(end, offset);
        iov_memset(qiov->iov, qiov->niov, qoff + (size_t)(from - offset), 0,
                   (size_t)(offset + bytes - from));
    }
    cor_req_end(s, &req);
    if (buf) {
        cor_buf_put(s, buf, buf_align, buf_size);
    }
    return ret < 0 ? ret : 0;
}

/* The next image below the file (QEMU's bdrv_backing_chain_next). */
static BlockNode *file_chain_next(BlockNode *file)
{
    BlockNode *img = node_skip_filters(file);
    BlockNode *backing = img ? node_backing(img) : NULL;
    return node_skip_filters(backing);
}

static int coroutine_fn cor_co_preadv(BlockNode *bs, int64_t offset,
                                      int64_t bytes, IOVec *qiov,
                                      size_t qoff, int flags)
{
    CorState *s = bs->opaque;
    bool prefetch = flags & REQ_PREFETCH;

    if (!s->bottom) {
        return cor_copy(bs, offset, bytes, qiov, qoff, prefetch);
    }
    /*
     * With a bottom, only what lies in the chain between the file and the
     * bottom (included) is copied; the rest is read (or, for a prefetch,
     * left alone).
     */
    BlockNode *file = bs->file->bs;
    while (bytes > 0) {
        int64_t n;
        bool copy = false;
        int ret = node_co_is_allocated(file, offset, bytes, &n);
        if (ret <= 0) {
            if (ret < 0) {
                n = bytes;
            }
            BlockNode *below = file_chain_next(file);
            int r2 = below ? node_co_is_allocated_above(below, s->bottom,
                                                        true, offset, n, &n)
                           : 0;
            copy = r2 != 0;
            if (n <= 0) {
                /* Past the end of the chain: read the rest plainly. */
                n = bytes;
                copy = false;
            }
        }
        if (copy) {
            ret = cor_copy(bs, offset, n, qiov, qoff, prefetch);
        } else if (!prefetch && qiov) {
            ret = child_co_preadv(bs->file, offset, n, qiov, qoff, 0);
        } else {
            ret = 0;
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += (size_t)n;
        bytes -= n;
    }
    return 0;
}

/* ---- Writes pass through, waiting for overlapping copies ---- */

static int coroutine_fn cor_co_pwritev(BlockNode *bs, int64_t offset,
                                       int64_t bytes, IOVec *qiov,
                                       size_t qoff, int flags)
{
    CorState *s = bs->opaque;
    CorReq req;
    cor_req_begin(s, &req, offset, bytes, false);
    int ret = child_co_pwritev(bs->file, offset, bytes, qiov, qoff, flags);
    cor_req_end(s, &req);
    return ret;
}

static int coroutine_fn cor_co_pwritev_compressed(BlockNode *bs,
                                                  int64_t offset,
                                                  int64_t bytes, IOVec *qiov,
                                                  size_t qoff)
{
    CorState *s = bs->opaque;
    CorReq req;
    cor_req_begin(s, &req, offset, bytes, false);
    int ret = child_co_pwritev(bs->file, offset, bytes, qiov, qoff,
                               REQ_WRITE_COMPRESSED);
    cor_req_end(s, &req);
    return ret;
}

static int coroutine_fn cor_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                             int64_t bytes, int flags)
{
    CorState *s = bs->opaque;
    CorReq req;
    cor_req_begin(s, &req, offset, bytes, false);
    int ret = child_co_pwrite_zeroes(bs->file, offset, bytes, flags);
    cor_req_end(s, &req);
    return ret;
}

static int coroutine_fn cor_co_pdiscard(BlockNode *bs, int64_t offset,
                                        int64_t bytes)
{
    CorState *s = bs->opaque;
    CorReq req;
    cor_req_begin(s, &req, offset, bytes, false);
    int ret = child_co_pdiscard(bs->file, offset, bytes);
    cor_req_end(s, &req);
    return ret;
}

static int coroutine_fn cor_co_truncate(BlockNode *bs, int64_t offset,
                                        bool exact, PreallocMode prealloc,
                                        GError **errp)
{
    return child_co_truncate(bs->file, offset, exact, prealloc, errp);
}

/*
 * With x-strata-discard-backing, the copied ranges leave the images
 * below (cor-discard.h); the flush then goes on down the children as
 * usual: the file, and the images the ranges left.
 */
static int coroutine_fn cor_co_flush_to_os(BlockNode *bs)
{
    CorState *s = bs->opaque;
    return s->discard ? cor_discard_flush(s->discard) : 0;
}

bool cor_filter_drop(BlockNode *cor, GError **errp)
{
    g_return_val_if_fail(node_is_cor_filter(cor), false);
    /* Unfreeze first: the replace moves the filter's parents to its file. */
    cor_unfreeze(cor);
    bool ok = node_replace(cor, cor->file->bs, errp);
    node_unref(cor);
    return ok;
}

const BlockDriver bdrv_copy_on_read = {
    .format_name = "copy-on-read",
    .instance_size = sizeof(CorState),
    .is_filter = true,
    .open = cor_open,
    .close = cor_close,
    .child_perm = cor_child_perm,
    .co_preadv = cor_co_preadv,
    .co_pwritev = cor_co_pwritev,
    .co_pwritev_compressed = cor_co_pwritev_compressed,
    .co_pwrite_zeroes = cor_co_pwrite_zeroes,
    .co_pdiscard = cor_co_pdiscard,
    .co_flush_to_os = cor_co_flush_to_os,
    .co_truncate = cor_co_truncate,
    .getlength = cor_getlength,
    .has_variable_length = true,
};
