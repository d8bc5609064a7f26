/*
 * The stream job (strata/stream.h), QEMU 7.2's block/stream.c on strata's
 * graph and copy engine.
 *
 * Set-up, as QEMU: a read-only image is reopened read-write; a
 * copy-on-read filter goes above the image with "bottom" the last image
 * to copy from (freezing the chain down to it); the job reads through
 * the filter with an unnamed backend of its own and attaches to the
 * image ("active node") and to every node that leaves the chain
 * ("intermediate node"), sharing no write or resize on them.
 *
 * The copy: the engine walks the image with REQ_PREFETCH reads through
 * the filter, which writes into the image what it fetched.  What to read
 * is classify()'s answer: nothing where the image holds the range
 * itself or where no image down to the bottom does.  The filter writes
 * what such a read pulled up at normal class (idle-class writes were
 * measured and dropped: block/drivers/copy-on-read.c).  Read errors go
 * through the on-error policy (stream reports every error as a read, as
 * QEMU does).
 *
 * Completion: the filter goes, the image's backing link moves to the base
 * (or goes), and the image header names the base by its filename or by
 * backing-file.  Failure or cancel: the filter goes, the chain stays.
 */
#include <errno.h>
#include <string.h>

#include "strata/backend.h"
#include "strata/block-copy.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/copy-on-read.h"
#include "strata/error.h"
#include "strata/stream.h"
#include "progress-front.h"

/*
 * QEMU's STREAM_CHUNK: how much one step of QEMU's loop copies at most.
 * The engine's data chunks are this size from the first one, so that a
 * job limited to a speed copies what QEMU's does before it first sleeps
 * (QEMU 141: speed 1, cancelled at 512 KiB), and the progress a failed
 * or cancelled job reports stops where QEMU's does (progress-front.c).
 */
#define STREAM_CHUNK (512 * 1024)

typedef struct StreamJob {
    BlockJob common;
    BlockBackend *blk;           /* reads through the filter */
    BlockNode *target_bs;        /* the image streamed into */
    BlockNode *cor;              /* the filter; NULL once dropped */
    BlockNode *base_overlay;     /* the last image copied from */
    BlockNode *above_base;       /* the last node leaving the chain */
    char *backing_file;
    bool bs_read_only;
    BlockdevOnError on_error;
    bool discard_backing;
    GSList *intermediates;       /* BlockChild*: the job's edges, top down */
    ProgressFront front;         /* the progress reported */
    BlockCopyState *bcs;         /* the engine, while run() copies */
    /* The header's backing file and format before the job changed them. */
    bool header_changed;
    char *old_backing, *old_backing_fmt;
} StreamJob;

/* The node below bs in its chain: backing image or filtered child. */
static BlockNode *filter_or_cow_bs(BlockNode *bs)
{
    if (!bs) {
        return NULL;
    }
    BlockNode *b = node_backing(bs);
    return b ? b : node_filtered_child(bs);
}

/* The next image down the chain, filters skipped (bdrv_backing_chain_next). */
static BlockNode *chain_next(BlockNode *bs)
{
    BlockNode *img = node_skip_filters(bs);
    return img ? node_skip_filters(node_backing(img)) : NULL;
}

/* The image whose backing (filters skipped) is base (bdrv_find_overlay). */
static BlockNode *find_overlay(BlockNode *active, BlockNode *base)
{
    base = node_skip_filters(base);
    for (active = node_skip_filters(active); active;) {
        BlockNode *next = chain_next(active);
        if (next == base) {
            return active;
        }
        active = next;
    }
    return NULL;
}

/* ---- Beyond QEMU: x-strata-discard-backing ---- */

/* Is c one of the job's edges, or an edge of the chain above a node leaving? */
static bool stream_own_edge(StreamJob *s, BlockChild *c)
{
    if (g_slist_find(s->intermediates, c)) {
        return true;
    }
    if (child_parent_kind(c) != PARENT_NODE) {
        return false;
    }
    BlockNode *parent = child_parent(c);
    if (parent == node_skip_filters(s->target_bs)) {
        return node_backing_child(parent) == c;
    }
    for (GSList *l = s->intermediates; l; l = l->next) {
        if (child_node(l->data) == parent) {
            return true;
        }
    }
    return false;
}

/*
 * Everything the images leaving the chain hold is in the image now:
 * discard their data, top down, as long as nothing else uses them (an
 * image another user reads, and every image below it, stays as it is).
 * Each is emptied as a commit empties its top (node_make_empty): it then
 * reads through to what is below it, and a qcow2 file shrinks.  The job
 * writes through its own edge to the node.  A failure is only a warning:
 * the stream itself succeeded.
 */
static void coroutine_fn stream_discard_backing(StreamJob *s)
{
    for (GSList *l = s->intermediates; l; l = l->next) {
        BlockChild *ours = l->data;
        BlockNode *n = child_node(ours);
        for (BlockChild *p = node_next_parent(n, NULL); p;
             p = node_next_parent(n, p)) {
            if (!stream_own_edge(s, p)) {
                return;
            }
        }
        if (node_filtered_child(n)) {
            continue;           /* a filter holds no data of its own */
        }
        GError *err = NULL;
        int64_t len = node_getlength(n);
        int ret = len < 0 ? (int)len : 0;
        if (ret == 0 &&
            !child_set_perm(ours, BLK_PERM_WRITE, BLK_PERM_ALL, &err)) {
            ret = -EPERM;
        }
        if (ret == 0) {
            ret = node_make_empty(n, &err);
        }
        if (ret < 0) {
            warn_print("x-strata-discard-backing: node '%s': %s",
                       node_get_name(n), err ? err->message : strerror(-ret));
            g_clear_error(&err);
            return;
        }
    }
}

/*
 * The base the image keeps: the node below the last one leaving, and the
 * image (filters skipped) whose name and format the header will give.
 */
static BlockNode *stream_base(StreamJob *s, BlockNode **ubase)
{
    BlockNode *base = filter_or_cow_bs(s->above_base);
    *ubase = node_skip_filters(base);
    return base;
}

/*
 * The header names the base from the end of the copy on, where QEMU's
 * prepare() names it just after moving the link: done here, in the job's
 * coroutine, the write does not run the main loop under prepare() (which
 * would answer QMP requests in the middle of the job's completion).  The
 * image holds all the data of the images in between by then, so what it
 * reads does not depend on which of the two the header names.
 */
static int coroutine_fn stream_write_header(StreamJob *s, GError **errp)
{
    BlockNode *unfiltered = node_skip_filters(s->target_bs);
    BlockNode *ubase;
    if (!node_backing_child(unfiltered)) {
        return 0;
    }
    stream_base(s, &ubase);
    const char *base_id = NULL, *base_fmt = NULL;
    if (ubase) {
        base_id = s->backing_file ? s->backing_file
                                  : node_get_filename(ubase);
        base_fmt = node_get_format_name(ubase);
    }
    char *old = g_strdup(node_backing_file(unfiltered));
    char *old_fmt = g_strdup(node_backing_format(unfiltered));
    int ret = node_change_backing_file(unfiltered, base_id, base_fmt, false,
                                       errp);
    if (ret >= 0) {
        s->header_changed = true;
        s->old_backing = old;
        s->old_backing_fmt = old_fmt;
    } else {
        g_free(old);
        g_free(old_fmt);
    }
    return ret;
}

/* ---- The copy ---- */

static int coroutine_fn stream_classify(void *opaque, int64_t offset,
                                        int64_t bytes, int64_t *pnum)
{
    StreamJob *s = opaque;
    BlockNode *unfiltered = node_skip_filters(s->target_bs);
    int64_t n;
    int ret = node_co_is_allocated(unfiltered, offset, bytes, &n);
    if (ret == 1) {
        *pnum = n;
        return BLOCK_COPY_SKIP;
    }
    if (ret < 0) {
        /* The read through the filter tells the error, as QEMU's would. */
        *pnum = bytes;
        return BLOCK_COPY_DATA;
    }
    BlockNode *below = node_backing(unfiltered);
    ret = below ? node_co_is_allocated_above(below, s->base_overlay, true,
                                             offset, n, &n)
                : 0;
    if (ret < 0) {
        *pnum = bytes;
        return BLOCK_COPY_DATA;
    }
    if (n <= 0) {
        /* Past the end of the backing chain: nothing there to copy. */
        *pnum = bytes;
        return BLOCK_COPY_SKIP;
    }
    *pnum = n;
    return ret ? BLOCK_COPY_DATA : BLOCK_COPY_SKIP;
}

static void stream_progress(void *opaque, int64_t offset, int64_t bytes,
                            BlockCopyKind kind)
{
    StreamJob *s = opaque;
    (void)kind;
    progress_front_done(&s->front, offset, bytes);
}

/*
 * The next step of QEMU's loop: up to a chunk, as far as the image
 * allocates the range or not, then as far as the chain below does.
 */
static int64_t coroutine_fn stream_extent(StreamJob *s, int64_t off,
                                          int64_t bytes)
{
    BlockNode *unfiltered = node_skip_filters(s->target_bs);
    int64_t n = bytes;
    int ret = node_co_is_allocated(unfiltered, off, bytes, &n);
    BlockNode *below = node_backing(unfiltered);
    if (ret == 0 && below) {
        ret = node_co_is_allocated_above(below, s->base_overlay, true, off,
                                         n, &n);
    }
    return ret < 0 || n <= 0 ? bytes : n;
}

/*
 * on-error=ignore gives a failed range up and goes on, the job ending
 * with the first error.  Ranges the engine copies in parallel cannot be
 * told apart once one fails, so this policy walks the image in QEMU's
 * chunks, one at a time through the engine: a chunk that fails is one
 * BLOCK_JOB_ERROR and is skipped, as in QEMU.
 */
static int coroutine_fn stream_copy_ignoring(StreamJob *s,
                                             BlockCopyState *bcs)
{
    Job *job = &s->common.job;
    int64_t len = dirty_bitmap_size(block_copy_bitmap(bcs));
    int error = 0;

    for (int64_t off = 0; off < len;) {
        int64_t n = stream_extent(s, off, MIN(STREAM_CHUNK, len - off));
        bool is_read = true;
        job_ratelimit_sleep(job);
        if (job_is_cancelled(job)) {
            break;
        }
        int ret = block_copy_range(bcs, off, n, &is_read);
        if (ret == -ECANCELED) {
            break;
        }
        if (ret < 0) {
            BlockErrorAction a = block_job_error_action(&s->common,
                                                        s->on_error, true,
                                                        -ret);
            if (a == BLOCK_ERROR_ACTION_STOP) {
                job_pause_point(job);
                continue;       /* the same chunk again */
            }
            if (error == 0) {
                error = ret;
            }
            if (a == BLOCK_ERROR_ACTION_REPORT) {
                break;
            }
            block_copy_reset_dirty(bcs, off, n);
            progress_front_done(&s->front, off, n);
        } else {
            job_ratelimit_processed(job, (uint64_t)n);
        }
        off += n;
    }
    return error;
}

static int coroutine_fn stream_run(Job *job, GError **errp)
{
    StreamJob *s = (StreamJob *)job;
    BlockNode *unfiltered = node_skip_filters(s->target_bs);
    int error = 0;

    if (unfiltered == s->base_overlay) {
        return 0;               /* nothing to stream */
    }
    int64_t len = node_getlength(s->target_bs);
    if (len < 0) {
        return (int)len;
    }
    job_progress_set_remaining(job, (uint64_t)len);

    BlockDriverInfo bdi;
    int64_t gran = 64 * 1024;
    /* The filter copies whole clusters of the image: so does each chunk. */
    if (node_get_info(unfiltered, &bdi) == 0 && bdi.cluster_size > gran) {
        gran = bdi.cluster_size;
    }
    BlockCopyOptions o = {
        .source = blk_root(s->blk),
        .granularity = gran,
        .max_chunk = MAX(STREAM_CHUNK, gran),
        .fixed_chunk = true,
        .target = NULL,
        .classify = stream_classify,
        .classify_opaque = s,
        .read_flags = REQ_PREFETCH,
        .progress = stream_progress,
        .progress_opaque = s,
    };
    progress_front_init(&s->front, job);
    BlockCopyState *bcs = block_copy_new(&o, errp);
    if (!bcs) {
        progress_front_destroy(&s->front);
        return -EINVAL;
    }
    s->bcs = bcs;
    if (s->on_error == BLOCKDEV_ON_ERROR_IGNORE) {
        error = stream_copy_ignoring(s, bcs);
    }
    while (s->on_error != BLOCKDEV_ON_ERROR_IGNORE) {
        bool is_read = true;
        int ret = block_copy_run(bcs, job, &is_read);
        if (ret == 0 || ret == -ECANCELED) {
            break;
        }
        /* A stream's errors are all reads (through the filter). */
        BlockErrorAction a = block_job_error_action(&s->common, s->on_error,
                                                    true, -ret);
        if (a == BLOCK_ERROR_ACTION_STOP) {
            job_pause_point(job);
            continue;
        }
        error = ret;
        break;
    }
    s->bcs = NULL;
    block_copy_free(bcs);
    progress_front_destroy(&s->front);
    /* Do not drop the chain when an error was ignored (QEMU's rule). */
    if (error || job_is_cancelled(job)) {
        return error;
    }
    int ret = stream_write_header(s, errp);
    if (ret < 0) {
        return ret;
    }
    if (s->discard_backing) {
        stream_discard_backing(s);
    }
    return 0;
}

/* ---- Completion ---- */

static void stream_drop_filter(StreamJob *s)
{
    if (s->cor) {
        GError *err = NULL;
        if (!cor_filter_drop(s->cor, &err)) {
            warn_print("%s", err->message);
            g_error_free(err);
        }
        s->cor = NULL;
        /*
         * The job's main edge moved to the image with the filter's other
         * parents; its reference follows, so that the filter goes now and
         * lets go of the image (a read-only image is reopened next).
         */
        if (s->common.bs != s->target_bs) {
            BlockNode *old = s->common.bs;
            node_ref(s->target_bs);
            s->common.bs = s->target_bs;
            node_unref(old);
        }
    }
}

static int stream_prepare(Job *job)
{
    StreamJob *s = (StreamJob *)job;
    GError *err = NULL;
    bool ok = true;

    /* The filter holds the chain: it goes first. */
    stream_drop_filter(s);
    /*
     * Held: from a job-finalize the drain begins in a BH, after whatever
     * the loop had queued (another job's completion), and the image's
     * backing link and the base are looked up only once it has begun:
     * the chain below above_base is not frozen, and a commit finishing
     * there may have moved (and freed) the base meanwhile.
     */
    BlockNode *unfiltered = node_skip_filters(s->target_bs);
    if (!node_backing_child(unfiltered)) {
        return 0;       /* no drain then, as before */
    }
    node_ref(unfiltered);
    node_drain_begin(unfiltered);
    BlockChild *cow = node_backing_child(unfiltered);
    if (cow) {
        BlockNode *ubase;
        BlockNode *base = stream_base(s, &ubase);
        if (base) {
            node_ref(base);
            ok = child_replace_node(cow, base, &err);
            node_unref(base);
        } else {
            ok = child_detach(cow, &err);
        }
        node_refresh_filename(unfiltered);
    }
    node_drain_end(unfiltered);
    node_unref(unfiltered);
    if (!ok) {
        /* QEMU reports it on its own, the job fails with EPERM. */
        warn_print("%s", err->message);
        g_error_free(err);
        return -EPERM;
    }
    return 0;
}

/*
 * Cancelled (or failed in another job's transaction) after the copy: the
 * chain stays, and so must the name the header gives it.
 */
static void stream_abort(Job *job)
{
    StreamJob *s = (StreamJob *)job;
    if (s->header_changed) {
        GError *err = NULL;
        BlockNode *unfiltered = node_skip_filters(s->target_bs);
        const char *fmt = s->old_backing_fmt[0] ? s->old_backing_fmt : NULL;
        if (node_change_backing_file(unfiltered, s->old_backing, fmt, false,
                                     &err) < 0) {
            warn_print("%s", err->message);
            g_error_free(err);
        }
        s->header_changed = false;
    }
}

static void stream_clean(Job *job)
{
    StreamJob *s = (StreamJob *)job;

    stream_drop_filter(s);
    if (s->blk) {
        blk_unref(s->blk);
        s->blk = NULL;
    }
    /* Back to read-only once nothing here writes any more. */
    if (s->bs_read_only) {
        GError *err = NULL;
        if (!node_reopen(s->target_bs, NULL, true, &err)) {
            g_error_free(err);
        }
    }
}

static void stream_free(Job *job)
{
    StreamJob *s = (StreamJob *)job;
    g_slist_free(s->intermediates);
    g_free(s->backing_file);
    g_free(s->old_backing);
    g_free(s->old_backing_fmt);
    node_unref(s->target_bs);
}

/* A drain or job-pause waits for the copies in flight: no idle class. */
static void stream_pause_wanted(Job *job)
{
    StreamJob *s = (StreamJob *)job;

    if (s->bcs) {
        block_copy_promote(s->bcs);
    }
}

static const JobDriver stream_job_driver = {
    .instance_size = sizeof(StreamJob),
    .job_type = JOB_TYPE_STREAM,
    .run = stream_run,
    .user_resume = block_job_user_resume,
    .prepare = stream_prepare,
    .abort = stream_abort,
    .clean = stream_clean,
    .free = stream_free,
    .pause_wanted = stream_pause_wanted,
};

/* ---- Start ---- */

/*
 * QEMU inserts the filter with bdrv_replace_node, which refuses a frozen
 * edge to the image in its own words.
 */
static bool parents_unfrozen(BlockNode *bs, BlockNode *cor, GError **errp)
{
    for (BlockChild *c = node_next_parent(bs, NULL); c;
         c = node_next_parent(bs, c)) {
        if (child_parent_kind(c) == PARENT_NODE && child_parent(c) == cor) {
            continue;
        }
        if (child_frozen_count(c) > 0) {
            error_setg(errp, "Cannot change '%s' link to '%s'",
                       child_name(c), node_get_name(bs));
            return false;
        }
    }
    return true;
}

static BlockNode *insert_filter(BlockNode *bs, BlockNode *bottom,
                                const char *node_name, GError **errp)
{
    json_t *opts = json_pack("{s:s, s:s, s:s}", "driver", "copy-on-read",
                             "file", node_get_name(bs),
                             "bottom", node_get_name(bottom));
    if (node_name) {
        json_object_set_new(opts, "node-name", json_string(node_name));
    }
    GError *err = NULL;
    BlockNode *cor = node_open(NULL, opts, NODE_O_RDWR, &err);
    if (!cor) {
        error_prefix(&err, "Could not create node: ");
        error_propagate(errp, err);
        return NULL;
    }
    if (!node_name) {
        node_set_implicit(cor);
    }
    if (!parents_unfrozen(bs, cor, &err) || !node_replace(bs, cor, &err)) {
        error_prefix(&err, "Could not replace node: ");
        error_propagate(errp, err);
        node_unref(cor);
        return NULL;
    }
    return cor;
}

bool stream_start(const char *job_id, const StreamOptions *o, GError **errp)
{
    BlockNode *bs = o->bs;
    BlockNode *base = o->base;
    BlockNode *base_overlay, *above_base;
    const uint64_t basic = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;
    BlockNode *cor = NULL;
    StreamJob *s = NULL;
    const char *owner = "stream job set-up";

    if (o->bottom) {
        base_overlay = above_base = o->bottom;
    } else {
        base_overlay = find_overlay(bs, base);
        if (!base_overlay) {
            error_setg(errp, "'%s' is not in the backing chain of '%s'",
                       node_get_name(base), node_get_name(bs));
            return false;
        }
        /* Between base_overlay and base there can only be filters. */
        above_base = base_overlay;
        if (node_backing(above_base) != base) {
            above_base = node_backing(above_base);
            while (above_base && node_filtered_child(above_base) != base) {
                above_base = node_filtered_child(above_base);
            }
        }
    }

    bool bs_read_only = node_is_read_only(bs);
    if (bs_read_only) {
        /* Hold the chain while the image reopens read-write. */
        if (!chain_freeze(bs, above_base, owner, errp)) {
            return false;
        }
        bool ok = node_reopen(bs, NULL, false, errp);
        chain_unfreeze(bs, above_base, owner);
        if (!ok) {
            return false;
        }
    }

    cor = insert_filter(bs, base_overlay, o->filter_node_name, errp);
    if (!cor) {
        goto fail;
    }
    s = block_job_create(job_id, &stream_job_driver, NULL, cor, 0,
                         BLK_PERM_ALL, o->speed, o->flags, NULL, NULL, errp);
    if (!s) {
        goto fail;
    }
    s->cor = cor;
    s->target_bs = bs;
    node_ref(bs);
    s->bs_read_only = bs_read_only;
    s->on_error = o->on_error;
    s->backing_file = g_strdup(o->backing_file);
    s->discard_backing = o->discard_backing;
    s->base_overlay = base_overlay;
    s->above_base = above_base;

    s->blk = blk_new(BLK_PERM_CONSISTENT_READ, basic | BLK_PERM_WRITE);
    if (!blk_insert_node(s->blk, cor, errp)) {
        goto fail_job;
    }
    /*
     * No one else may change the graph here or resize the image (its
     * length is read once); the nodes that will leave the chain are read
     * once each, so no one may write them either.
     */
    if (!job_add_node(&s->common.job, "active node", bs, 0,
                      basic | BLK_PERM_WRITE, errp)) {
        goto fail_job;
    }
    BlockNode *end = filter_or_cow_bs(above_base);
    for (BlockNode *it = filter_or_cow_bs(bs); it && it != end;
         it = filter_or_cow_bs(it)) {
        BlockChild *c = job_add_node(&s->common.job, "intermediate node", it,
                                     0, basic, errp);
        if (!c) {
            goto fail_job;
        }
        s->intermediates = g_slist_append(s->intermediates, c);
    }
    job_start(&s->common.job);
    return true;

fail_job:
    /* The job's clean() is not called for a job that never ran. */
    if (s->blk) {
        blk_unref(s->blk);
        s->blk = NULL;
    }
    s->bs_read_only = false;
    s->cor = NULL;
    job_early_fail(&s->common.job);
fail:
    if (cor) {
        GError *err = NULL;
        if (!cor_filter_drop(cor, &err)) {
            g_error_free(err);
        }
    }
    if (bs_read_only) {
        node_reopen(bs, NULL, true, NULL);
    }
    return false;
}
