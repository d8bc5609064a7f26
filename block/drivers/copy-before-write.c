/*
 * copy-before-write: a filter whose writes (and zero writes and discards)
 * first copy the old data of the clusters they touch from its file to its
 * target, through the copy engine (strata/block-copy.h), so that the target
 * keeps what file held when the filter was opened.  Each cluster is copied
 * at most once: the engine's bitmap says what is still to copy (all of it,
 * or what the `bitmap` option marks).  The backup job inserts one above its
 * source (cbw_append) and copies the rest in the background with the same
 * engine.  QEMU 7.2's driver: options, permissions, messages, and the two
 * anonymous bitmaps it keeps on the filter node (copied ranges; ranges a
 * snapshot reader may access).
 *
 * on-cbw-error: a failed copy fails the guest's write (break-guest-write),
 * or lets it through and gives up the snapshot (break-snapshot: no more
 * copies from then on).  cbw-timeout: a write waits that many seconds for
 * its copy at most, then counts as a failed copy (-ETIMEDOUT) while the
 * copy finishes in the background (the node stays in flight for it).
 */
#include <errno.h>
#include <string.h>

#include "strata/block-driver.h"
#include "strata/copy-before-write.h"
#include "strata/dirty-bitmap.h"
#include "strata/error.h"
#include "strata/loop.h"
#include "strata/units.h"

static const char *const on_cbw_error_names[] = {
    "break-guest-write", "break-snapshot", NULL,
};
enum { ON_CBW_ERROR_BREAK_GUEST_WRITE, ON_CBW_ERROR_BREAK_SNAPSHOT };

typedef struct CbwState {
    BlockChild *target;
    BlockCopyState *bcs;
    DirtyBitmap *user_bitmap;     /* the `bitmap` option, or NULL */
    DirtyBitmap *done_bitmap;     /* copied by copy-before-write */
    DirtyBitmap *access_bitmap;   /* what a snapshot reader may read */
    int on_cbw_error;
    int64_t timeout_ns;           /* 0: wait as long as the copy takes */
    int snapshot_error;           /* break-snapshot: the first failure */
    /* Snapshot reads from file in flight (CbwFrozenRead*): guest writes
     * to their ranges wait (fleecing section below). */
    GQueue frozen_reads;
    CoQueue frozen_waiters;
} CbwState;

static void coroutine_fn cbw_wait_frozen_reads(CbwState *s, int64_t offset,
                                               int64_t bytes);

static BlockCopyState *cbw_new_engine(BlockNode *bs,
                                      const CbwCopyOptions *o,
                                      GError **errp)
{
    CbwState *s = bs->opaque;
    BlockCopyOptions opts = {
        .source = bs->file,
        .target = s->target,
        .start_clean = s->user_bitmap != NULL,
        .unmap = true,
    };
    if (o) {
        opts.compress = o->compress;
        opts.use_copy_range = o->use_copy_range;
        opts.max_workers = o->max_workers;
        opts.max_chunk = o->max_chunk;
        opts.classify = o->classify;
        opts.classify_opaque = o->classify_opaque;
        opts.progress = o->progress;
        opts.progress_opaque = o->progress_opaque;
    }
    BlockCopyState *bcs = block_copy_new(&opts, errp);
    if (!bcs) {
        return NULL;
    }
    if (s->user_bitmap) {
        GError *err = NULL;
        if (!dirty_bitmap_merge(block_copy_bitmap(bcs), s->user_bitmap,
                                &err)) {
            error_setg(errp, "Failed to merge bitmap '%s' to internal "
                       "copy-bitmap: %s", dirty_bitmap_name(s->user_bitmap),
                       err->message);
            g_error_free(err);
            block_copy_free(bcs);
            return NULL;
        }
    }
    return bcs;
}

/* The filter's own two bitmaps, after the engine's (QEMU's order). */
static bool cbw_make_bitmaps(BlockNode *bs, GError **errp)
{
    CbwState *s = bs->opaque;
    uint32_t gran = (uint32_t)block_copy_granularity(s->bcs);

    s->done_bitmap = node_create_dirty_bitmap(bs, gran, NULL, errp);
    if (!s->done_bitmap) {
        return false;
    }
    dirty_bitmap_set_enabled(s->done_bitmap, false);
    s->access_bitmap = node_create_dirty_bitmap(bs, gran, NULL, errp);
    if (!s->access_bitmap) {
        return false;
    }
    dirty_bitmap_set_enabled(s->access_bitmap, false);
    return dirty_bitmap_merge(s->access_bitmap, block_copy_bitmap(s->bcs),
                              errp);
}

static DirtyBitmap *cbw_lookup_bitmap(json_t *options, GError **errp)
{
    json_t *bm = opts_take_subtree(options, "bitmap");
    char *node = NULL, *name = NULL;
    DirtyBitmap *found = NULL;

    if (!bm) {
        return NULL;
    }
    if (!opts_take_str(bm, "node", &node, errp) ||
        !opts_take_str(bm, "name", &name, errp)) {
        goto out;
    }
    BlockNode *bs = node ? node_find(node) : NULL;
    if (!bs) {
        error_setg(errp, "Node '%s' not found", node ? node : "");
        goto out;
    }
    found = node_find_dirty_bitmap(bs, name ? name : "");
    if (!found) {
        error_setg(errp, "Dirty bitmap '%s' not found", name ? name : "");
    }
out:
    g_free(node);
    g_free(name);
    json_decref(bm);
    return found;
}

/*
 * QEMU's block_copy_calculate_cluster_size(): a target that cannot say
 * what its block size is (NBD, null-co: its driver has no get_info) and
 * has no backing file to fill partly written blocks from is copied in the
 * default 64 KiB clusters, and qsd 7.2 warns that larger blocks on the
 * target would make the backup unusable.  Printed when the filter makes
 * its copy state, whoever opens it (blockdev-add, --blockdev, a backup
 * job inserting its filter).
 */
static void cbw_warn_unknown_block_size(BlockNode *target)
{
    BlockDriverInfo bdi;
    BlockNode *t = node_skip_filters(target);
    BlockNode *b = t ? node_backing(t) : NULL;

    if (node_get_info(target, &bdi) == -ENOTSUP && !b) {
        warn_report("The target block device doesn't provide information "
                    "about the block size and it doesn't have a backing "
                    "file. The default block size of %u bytes is used. If "
                    "the actual block size of the target exceeds this "
                    "default, the backup may be unusable",
                    (unsigned)(64 * KiB));
    }
}

static int cbw_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    CbwState *s = bs->opaque;
    int64_t timeout_s = 0;
    int on_err = ON_CBW_ERROR_BREAK_GUEST_WRITE;
    GError *err = NULL;

    (void)flags;
    /* The schema has checked the types; these take what it let through. */
    if (!opts_take_enum(options, "on-cbw-error", on_cbw_error_names, &on_err,
                        errp) ||
        !opts_take_int(options, "cbw-timeout", &timeout_s, errp)) {
        return -EINVAL;
    }
    if (timeout_s < 0 || timeout_s > UINT32_MAX) {
        error_setg(errp, "Parameter 'cbw-timeout' expects uint32_t");
        return -EINVAL;
    }
    bs->file = node_open_child(bs, options, "file",
                               CHILD_ROLE_FILTERED | CHILD_ROLE_PRIMARY,
                               false, errp);
    if (!bs->file) {
        return -EINVAL;
    }
    s->target = node_open_child(bs, options, "target", CHILD_ROLE_DATA,
                                false, errp);
    if (!s->target) {
        return -EINVAL;
    }
    s->user_bitmap = cbw_lookup_bitmap(options, &err);
    if (err) {
        g_propagate_error(errp, err);
        return -EINVAL;
    }
    s->on_cbw_error = on_err;
    s->timeout_ns = timeout_s * 1000000000;
    g_queue_init(&s->frozen_reads);
    co_queue_init(&s->frozen_waiters);

    BlockNode *file = bs->file->bs;
    bs->supported_write_flags =
        REQ_WRITE_UNCHANGED |
        (REQ_FUA & (file->supported_write_flags |
                    file->drv->supported_write_flags));
    bs->supported_zero_flags =
        REQ_WRITE_UNCHANGED |
        ((REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK) &
         (file->supported_zero_flags | file->drv->supported_zero_flags));

    cbw_warn_unknown_block_size(s->target->bs);
    s->bcs = cbw_new_engine(bs, NULL, &err);
    if (!s->bcs) {
        error_setg(errp, "Cannot create block-copy-state: %s", err->message);
        g_error_free(err);
        return -EINVAL;
    }
    if (!cbw_make_bitmaps(bs, errp)) {
        /* A failed open releases what it took; the node's own bitmaps go
         * with the node. */
        block_copy_free(s->bcs);
        s->bcs = NULL;
        return -EINVAL;
    }
    return 0;
}

static void cbw_close(BlockNode *bs)
{
    CbwState *s = bs->opaque;

    if (s->access_bitmap) {
        dirty_bitmap_release(s->access_bitmap);
    }
    if (s->done_bitmap) {
        dirty_bitmap_release(s->done_bitmap);
    }
    if (s->bcs) {
        block_copy_free(s->bcs);
        s->bcs = NULL;
    }
}

/* ---- The copy before a write, with an optional time limit ---- */

typedef struct CbwCall {
    BlockNode *bs;
    BlockCopyState *bcs;
    int64_t offset, bytes;
    int ret;
    bool error_is_read;
    bool done, timed_out;
    Coroutine *waiter;
    GSource *timer;
    int refs;                    /* the copy's coroutine, the waiter */
} CbwCall;

static void cbw_call_unref(CbwCall *c)
{
    if (--c->refs == 0) {
        g_free(c);
    }
}

static void coroutine_fn cbw_call_entry(void *opaque)
{
    CbwCall *c = opaque;

    c->ret = block_copy_range(c->bcs, c->offset, c->bytes, &c->error_is_read);
    c->done = true;
    if (c->waiter) {
        Coroutine *w = c->waiter;
        c->waiter = NULL;
        co_wake(w);
    }
    node_dec_in_flight(c->bs);
    cbw_call_unref(c);
}

static gboolean cbw_call_timeout(gpointer opaque)
{
    CbwCall *c = opaque;

    c->timed_out = true;
    if (c->waiter) {
        Coroutine *w = c->waiter;
        c->waiter = NULL;
        co_wake(w);
    }
    return G_SOURCE_REMOVE;
}

/*
 * The copy runs in a coroutine of its own so that the write can stop
 * waiting for it; the node stays in flight until it ends, so that
 * closing the filter waits for it (QEMU's block_copy with a timeout).
 */
static int coroutine_fn cbw_copy_timed(BlockNode *bs, CbwState *s,
                                       int64_t offset, int64_t bytes)
{
    CbwCall *c = g_new0(CbwCall, 1);
    int ret;

    *c = (CbwCall){ .bs = bs, .bcs = s->bcs, .offset = offset,
                    .bytes = bytes, .refs = 2 };
    node_inc_in_flight(bs);
    co_wake(co_create(cbw_call_entry, c));
    c->timer = g_timeout_source_new((guint)(s->timeout_ns / 1000000));
    g_source_set_callback(c->timer, cbw_call_timeout, c, NULL);
    g_source_attach(c->timer, loop_context(node_loop(bs)));
    while (!c->done && !c->timed_out) {
        c->waiter = co_self();
        co_yield();
    }
    g_source_destroy(c->timer);
    g_source_unref(c->timer);
    ret = c->done ? c->ret : -ETIMEDOUT;
    cbw_call_unref(c);
    return ret;
}

static int coroutine_fn cbw_do_copy_before_write(BlockNode *bs,
                                                 int64_t offset,
                                                 int64_t bytes, int flags)
{
    CbwState *s = bs->opaque;
    int64_t gran = block_copy_granularity(s->bcs);
    int64_t off, end;
    bool error_is_read;
    int ret;

    if ((flags & REQ_WRITE_UNCHANGED) || s->snapshot_error) {
        return 0;
    }
    off = offset - offset % gran;
    end = (offset + bytes + gran - 1) / gran * gran;
    if (s->timeout_ns) {
        ret = cbw_copy_timed(bs, s, off, end - off);
    } else {
        ret = block_copy_range(s->bcs, off, end - off, &error_is_read);
    }
    if (ret < 0) {
        if (s->on_cbw_error == ON_CBW_ERROR_BREAK_GUEST_WRITE) {
            return ret;
        }
        if (!s->snapshot_error) {
            s->snapshot_error = ret;
        }
    } else {
        dirty_bitmap_set(s->done_bitmap, off, end - off);
    }
    cbw_wait_frozen_reads(s, off, end - off);
    return 0;
}

static int coroutine_fn cbw_co_preadv(BlockNode *bs, int64_t offset,
                                      int64_t bytes, IOVec *qiov,
                                      size_t qiov_offset, int flags)
{
    return child_co_preadv(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn cbw_co_pwritev(BlockNode *bs, int64_t offset,
                                       int64_t bytes, IOVec *qiov,
                                       size_t qiov_offset, int flags)
{
    int ret = cbw_do_copy_before_write(bs, offset, bytes, flags);
    if (ret < 0) {
        return ret;
    }
    return child_co_pwritev(bs->file, offset, bytes, qiov, qiov_offset,
                            flags);
}

static int coroutine_fn cbw_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                             int64_t bytes, int flags)
{
    int ret = cbw_do_copy_before_write(bs, offset, bytes, flags);
    if (ret < 0) {
        return ret;
    }
    return child_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn cbw_co_pdiscard(BlockNode *bs, int64_t offset,
                                        int64_t bytes)
{
    int ret = cbw_do_copy_before_write(bs, offset, bytes, 0);
    if (ret < 0) {
        return ret;
    }
    return child_co_pdiscard(bs->file, offset, bytes);
}

/* Only the file: the target is the snapshot's, flushed by its users
 * (QEMU's filter flushes nothing else either). */
static int coroutine_fn cbw_co_flush(BlockNode *bs)
{
    return node_co_flush(bs->file->bs);
}

static int64_t cbw_getlength(BlockNode *bs)
{
    return node_getlength(bs->file->bs);
}

static void cbw_refresh_filename(BlockNode *bs)
{
    g_strlcpy(bs->filename, node_get_filename(bs->file->bs),
              sizeof(bs->filename));
}

static void cbw_child_perm(BlockNode *bs, BlockChild *c, unsigned role,
                           const ReopenState *rs, uint64_t perm,
                           uint64_t shared, uint64_t *nperm,
                           uint64_t *nshared)
{
    if (!(role & CHILD_ROLE_FILTERED)) {
        /*
         * The target: written here; others may write it too (it may be in
         * the guest disk's backing chain), but its size was checked once,
         * so nobody may resize it.
         */
        *nperm = BLK_PERM_WRITE;
        *nshared = BLK_PERM_ALL & ~BLK_PERM_RESIZE;
        return;
    }
    node_default_perms(bs, c, role, rs, perm, shared, nperm, nshared);
    if (bs->parents) {
        /*
         * Once somebody uses the filter (the backup job always does),
         * nobody may write or resize the source behind the filter's back;
         * the old data must be readable where parents write (QEMU 7.2
         * asks for consistent reads only then).
         */
        if (perm & BLK_PERM_WRITE) {
            *nperm |= BLK_PERM_CONSISTENT_READ;
        }
        *nshared &= ~(BLK_PERM_WRITE | BLK_PERM_RESIZE);
    }
}

const BlockDriver bdrv_copy_before_write = {
    .format_name = "copy-before-write",
    .instance_size = sizeof(CbwState),
    .is_filter = true,
    .open = cbw_open,
    .close = cbw_close,
    .child_perm = cbw_child_perm,
    .refresh_filename = cbw_refresh_filename,
    .co_preadv = cbw_co_preadv,
    .co_pwritev = cbw_co_pwritev,
    .co_pwrite_zeroes = cbw_co_pwrite_zeroes,
    .co_pdiscard = cbw_co_pdiscard,
    .co_flush = cbw_co_flush,
    .getlength = cbw_getlength,
    .has_variable_length = true,
};

/* ---- For the backup job ---- */

BlockNode *cbw_append(BlockNode *source, BlockNode *target,
                      const char *filter_node_name,
                      const CbwCopyOptions *opts, BlockCopyState **bcs,
                      GError **errp)
{
    json_t *o = json_object();
    BlockNode *top;
    CbwState *s;
    GError *err = NULL;

    json_object_set_new(o, "driver", json_string("copy-before-write"));
    if (filter_node_name) {
        json_object_set_new(o, "node-name", json_string(filter_node_name));
    }
    json_object_set_new(o, "file", json_string(node_get_name(source)));
    json_object_set_new(o, "target", json_string(node_get_name(target)));
    top = node_open(NULL, o, NODE_O_RDWR, &err);
    if (!top) {
        error_setg(errp, "Could not create node: %s", err->message);
        g_error_free(err);
        return NULL;
    }
    s = top->opaque;
    /*
     * The job's engine options replace the defaults the filter opened
     * with, before anything is written through it: nothing is copied
     * yet, and the two bitmaps only depend on the granularity, which
     * these options do not change.  A chunk limit below the granularity
     * is the caller's to refuse (QEMU's backup does, after this).
     */
    if (opts) {
        CbwCopyOptions o2 = *opts;
        if (o2.max_chunk && o2.max_chunk < block_copy_granularity(s->bcs)) {
            o2.max_chunk = 0;
        }
        BlockCopyState *n = cbw_new_engine(top, &o2, errp);
        if (!n) {
            node_unref(top);
            return NULL;
        }
        block_copy_free(s->bcs);
        s->bcs = n;
    }
    if (!node_replace(source, top, errp)) {
        node_unref(top);
        return NULL;
    }
    *bcs = s->bcs;
    return top;
}

void cbw_drop(BlockNode *cbw)
{
    GError *err = NULL;

    /*
     * A guest write already inside the filter must reach the source
     * before the filter's parents move: once they have, the filter holds
     * no write permission on the source any more and the write would fail
     * with EPERM (QEMU's bdrv_replace_node drains the filter too).
     */
    node_drain_begin(cbw);
    if (!node_replace(cbw, cbw->file->bs, &err)) {
        /* Taking parents back to where they were cannot conflict. */
        g_error("copy-before-write: cannot drop the filter: %s",
                err->message);
    }
    node_drain_end(cbw);
    node_unref(cbw);
}

/*
 * ---- Fleecing: the snapshot API (strata/copy-before-write.h) ----
 *
 * The point-in-time view the filter keeps: where a cluster's old data has
 * been copied (done_bitmap) it is read from the target, elsewhere from
 * file, which still holds it.  A read from file is registered as a
 * frozen read, and a guest write to its range, once its own copy is
 * done, waits for it before it reaches file (QEMU's frozen_read_reqs).
 * Only what access_bitmap marks may be read: what the engine was to copy
 * when the filter opened (all, or the `bitmap` option's clusters), less
 * what the reader has discarded.  After a failed copy under
 * break-snapshot the whole view is gone (-EACCES, as QEMU).
 */

/* On the reader's stack: no allocation per read. */
typedef struct CbwFrozenRead {
    int64_t offset, bytes;
    GList link;             /* in frozen_reads */
} CbwFrozenRead;

static bool cbw_frozen_overlaps(CbwState *s, int64_t offset, int64_t bytes)
{
    for (GList *l = s->frozen_reads.head; l; l = l->next) {
        CbwFrozenRead *r = l->data;
        if (r->offset < offset + bytes && offset < r->offset + r->bytes) {
            return true;
        }
    }
    return false;
}

static void coroutine_fn cbw_wait_frozen_reads(CbwState *s, int64_t offset,
                                               int64_t bytes)
{
    while (cbw_frozen_overlaps(s, offset, bytes)) {
        co_queue_wait(&s->frozen_waiters);
    }
}

/*
 * Where the leading part of [offset, offset + bytes) of the view is read
 * from: *child (the target, or file with *frozen registered, which the
 * caller passes to cbw_snapshot_unlock), its length in *pnum.  -EACCES
 * where the view has no data.
 */
static int cbw_snapshot_lock(CbwState *s, BlockNode *bs, int64_t offset,
                             int64_t bytes, int64_t *pnum,
                             BlockChild **child, CbwFrozenRead *frozen)
{
    int64_t next;
    bool done;

    frozen->link.data = NULL;
    if (s->snapshot_error ||
        dirty_bitmap_next_clean(s->access_bitmap, offset, bytes) != -1) {
        return -EACCES;
    }
    done = dirty_bitmap_get(s->done_bitmap, offset);
    next = done ? dirty_bitmap_next_clean(s->done_bitmap, offset, bytes)
                : dirty_bitmap_next_dirty(s->done_bitmap, offset, bytes);
    *pnum = next < 0 ? bytes : next - offset;
    if (done) {
        *child = s->target;
    } else {
        frozen->offset = offset;
        frozen->bytes = *pnum;
        frozen->link = (GList){ .data = frozen };
        g_queue_push_tail_link(&s->frozen_reads, &frozen->link);
        *child = bs->file;
    }
    return 0;
}

static void cbw_snapshot_unlock(CbwState *s, CbwFrozenRead *frozen)
{
    if (frozen->link.data) {
        g_queue_unlink(&s->frozen_reads, &frozen->link);
        frozen->link.data = NULL;
        co_queue_restart_all(&s->frozen_waiters);
    }
}

bool node_has_snapshot_api(const BlockNode *bs)
{
    return bs->drv == &bdrv_copy_before_write;
}

int coroutine_fn cbw_snapshot_preadv(BlockNode *bs, int64_t offset,
                                     int64_t bytes, IOVec *qiov,
                                     size_t qiov_offset)
{
    CbwState *s = bs->opaque;
    int ret = 0;

    if (!node_has_snapshot_api(bs)) {
        return -ENOTSUP;
    }
    node_inc_in_flight(bs);
    while (bytes > 0) {
        CbwFrozenRead frozen;
        BlockChild *child;
        int64_t n;

        ret = cbw_snapshot_lock(s, bs, offset, bytes, &n, &child, &frozen);
        if (ret < 0) {
            break;
        }
        ret = child_co_preadv(child, offset, n, qiov, qiov_offset, 0);
        cbw_snapshot_unlock(s, &frozen);
        if (ret < 0) {
            break;
        }
        offset += n;
        bytes -= n;
        qiov_offset += n;
    }
    node_dec_in_flight(bs);
    return ret;
}

int coroutine_fn cbw_snapshot_block_status(BlockNode *bs, bool want_zero,
                                           int64_t offset, int64_t bytes,
                                           int64_t *pnum, int64_t *map,
                                           BlockNode **file)
{
    CbwState *s = bs->opaque;
    CbwFrozenRead frozen;
    BlockChild *child;
    int64_t n;
    int ret;

    if (!node_has_snapshot_api(bs)) {
        return -ENOTSUP;
    }
    node_inc_in_flight(bs);
    ret = cbw_snapshot_lock(s, bs, offset, bytes, &n, &child, &frozen);
    if (ret == 0) {
        /*
         * The target is only asked about ranges copied to it, which it
         * allocates: an unallocated answer there would send the caller
         * down to file, whose data is no longer the view's.
         */
        ret = node_co_block_status(child->bs, want_zero, offset, n, pnum,
                                   map, file);
        if (ret >= 0 && child == s->target) {
            ret |= BLOCK_ALLOCATED;
        }
        cbw_snapshot_unlock(s, &frozen);
    }
    node_dec_in_flight(bs);
    return ret;
}

int coroutine_fn cbw_snapshot_pdiscard(BlockNode *bs, int64_t offset,
                                       int64_t bytes)
{
    CbwState *s = bs->opaque;
    int64_t gran, start, end;
    int ret;

    if (!node_has_snapshot_api(bs)) {
        return -ENOTSUP;
    }
    /* Whole clusters only: the rest of a cluster may still be read. */
    gran = block_copy_granularity(s->bcs);
    start = (offset + gran - 1) / gran * gran;
    end = (offset + bytes) / gran * gran;
    if (end <= start) {
        return 0;
    }
    node_inc_in_flight(bs);
    dirty_bitmap_reset(s->access_bitmap, start, end - start);
    /* Nothing left to keep there: a guest write need not copy it. */
    block_copy_reset_dirty(s->bcs, start, end - start);
    ret = child_co_pdiscard(s->target, start, end - start);
    node_dec_in_flight(bs);
    return ret;
}
