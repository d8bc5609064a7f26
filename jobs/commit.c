/*
 * The commit job (strata/commit.h): QEMU 7.2's intermediate commit on the
 * copy engine, and the copy of strata-img commit (copy_only).
 *
 * Graph, as QEMU's commit_start: a commit_top filter goes above top, the
 * job attaches to every image it merges ("intermediate node": no
 * permission taken, writes shared, consistent reads not, so nobody else
 * may rely on what they read while base fills) and to base, and the
 * chain from the filter down to base is frozen.  Data moves through two
 * backends: one on top (reads the whole chain) and one on base (writes,
 * resizes if base is shorter).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "strata/bitmap-pivot.h"
#include "discard-source.h"
#include "progress-front.h"
#include "strata/backend.h"
#include "strata/block-copy.h"
#include "strata/block-driver.h"
#include "strata/block-events.h"
#include "strata/commit.h"
#include "strata/error.h"

extern const BlockDriver bdrv_commit_top;

/*
 * Data written to base between two write-behind requests: small enough
 * that the syncs on the way (one per new L2 table of base, and the final
 * flush) find little left to write, large enough that the kernel writes
 * long runs.  See docs/performance.md, "Intermediate commit: the disk
 * works while the job copies".
 */
#define COMMIT_WRITE_BEHIND (16 * 1024 * 1024)

/* Largest range classify compares at once (x-strata-skip-identical). */
#define COMMIT_COMPARE_MAX (1 << 20)

typedef struct CommitJob {
    BlockJob common;
    BlockNode *commit_top;       /* the filter (our reference) */
    BlockNode *top, *base;
    /* The image of the chain right above base, filters skipped (QEMU's
     * s->base_overlay): what is allocated from top down to it is copied;
     * a filter between it and base (a throttle over base) is base's. */
    BlockNode *base_overlay;
    BlockBackend *top_blk, *base_blk;
    BlockCopyState *bcs;
    char *owner;                 /* the freeze owner's name */
    char *backing_file;          /* NULL: base's filename */
    BlockdevOnError on_error;
    bool chain_frozen, base_read_only;
    bool copy_only, skip_identical;
    bool merge_bitmaps;          /* x-strata-merge-bitmaps */
    /* x-strata-discard-source: the job's writing edges to the merged
     * images, top first, and the images it made writable (referenced). */
    bool discard_source;
    GPtrArray *punch_edges;
    GPtrArray *reopened;
    int64_t length;
    int64_t base_cluster;        /* copy_only: 0 when base has none */
    CommitStats stats;
    ProgressFront front;         /* the progress reported */
} CommitJob;

static void register_filter(void)
{
    static bool done;
    /* Registered when first used: strata-img's format list stays QEMU's. */
    if (!done) {
        driver_register(&bdrv_commit_top);
        done = true;
    }
}

/* The next image down a chain, past filters (QEMU's bdrv_filter_or_cow_bs). */
static BlockNode *filter_or_cow(BlockNode *bs)
{
    BlockNode *f = node_filtered_child(bs);
    return f ? f : node_backing(bs);
}

/* ---- What a range holds ---- */

/* x-strata-skip-identical: leading chunks base already holds as top reads. */
static int coroutine_fn classify_identical(CommitJob *s, int64_t offset,
                                           int64_t bytes, int64_t *pnum)
{
    int64_t gran = block_copy_granularity(s->bcs);
    int64_t n = MIN(bytes, COMMIT_COMPARE_MAX);
    uint8_t *a = g_malloc(n), *b = g_malloc(n);
    IOVec qa, qb;
    int ret;

    iovec_init_buf(&qa, a, (size_t)n);
    iovec_init_buf(&qb, b, (size_t)n);
    ret = blk_co_preadv(s->top_blk, offset, n, &qa, 0);
    if (ret >= 0) {
        ret = blk_co_preadv(s->base_blk, offset, n, &qb, 0);
    }
    if (ret >= 0) {
        /* The first chunk decides the kind; the run goes on while it holds. */
        int64_t step = MIN(gran - offset % gran, n);
        bool same = !memcmp(a, b, (size_t)step);
        int64_t done = step;

        while (done < n) {
            step = MIN(gran, n - done);
            if (!memcmp(a + done, b + done, (size_t)step) != !same) {
                break;
            }
            done += step;
        }
        *pnum = done;
        ret = same ? BLOCK_COPY_SKIP : BLOCK_COPY_DATA;
    }
    iovec_destroy(&qa);
    iovec_destroy(&qb);
    g_free(a);
    g_free(b);
    return ret;
}

/*
 * QEMU's bdrv_find_overlay: the image of top's chain whose next image
 * (through its backing, filters skipped on both sides) is base.  Asking
 * the chain down to base itself would count a filter over base: it
 * reports base's data as its own, all of it to copy.
 */
static BlockNode *find_base_overlay(BlockNode *top, BlockNode *base)
{
    BlockNode *active = node_skip_filters(top);
    base = node_skip_filters(base);
    while (active) {
        BlockNode *next = node_skip_filters(node_backing(active));
        if (next == base) {
            return active;
        }
        active = next;
    }
    return NULL;
}

/* QEMU's commit_run: copy what the images above base allocate. */
static int coroutine_fn commit_classify(void *opaque, int64_t offset,
                                        int64_t bytes, int64_t *pnum)
{
    CommitJob *s = opaque;
    int ret = s->base_overlay
        ? node_co_is_allocated_above(s->top, s->base_overlay, true, offset,
                                     bytes, pnum)
        : node_co_is_allocated_above(s->top, s->base, false, offset,
                                     bytes, pnum);
    if (ret < 0) {
        return ret;
    }
    if (!ret) {
        return BLOCK_COPY_SKIP;
    }
    return s->skip_identical ? classify_identical(s, offset, *pnum, pnum)
                             : BLOCK_COPY_DATA;
}

/*
 * copy_only, the images qemu-img commit's active commit (a mirror into
 * base) makes: granularity chunks that hold anything allocated above
 * base are copied whole; where the whole chain reads zeroes over whole
 * base clusters, zeroes are written (may unmap), so a zero cluster of an
 * overlay becomes one in base; everything else is data.
 */
static int coroutine_fn commit_classify_copy(void *opaque, int64_t offset,
                                             int64_t bytes, int64_t *pnum)
{
    CommitJob *s = opaque;
    int64_t gran = block_copy_granularity(s->bcs);
    int64_t n, limit;
    int ret = node_co_is_allocated_above(s->top, s->base, false, offset,
                                         bytes, &n);

    if (ret < 0) {
        return ret;
    }
    if (!ret && (n >= bytes || n >= gran)) {
        *pnum = n >= bytes ? bytes : ROUND_DOWN(n, gran);
        return BLOCK_COPY_SKIP;
    }
    /* Allocated, or allocated later inside the first chunk. */
    limit = ret ? MIN(bytes, ROUND_UP(offset + n, gran) - offset)
                : MIN(bytes, gran);
    ret = node_co_block_status_above(s->top, NULL, false, true, offset,
                                     limit, &n, NULL, NULL, NULL);
    n = ret < 0 ? limit : ROUND_DOWN(n, gran);
    if (n < gran) {
        *pnum = MIN(gran, limit);
        return BLOCK_COPY_DATA;
    }
    *pnum = n;
    if (!(ret & BLOCK_DATA) &&
        (!s->base_cluster ||
         (offset % s->base_cluster == 0 && n % s->base_cluster == 0))) {
        return BLOCK_COPY_ZERO;
    }
    return BLOCK_COPY_DATA;
}

static void commit_progress(void *opaque, int64_t offset, int64_t bytes,
                            BlockCopyKind kind)
{
    CommitJob *s = opaque;
    switch (kind) {
    case BLOCK_COPY_DATA:
        s->stats.bytes_written += (uint64_t)bytes;
        break;
    case BLOCK_COPY_ZERO:
        s->stats.bytes_zeroed += (uint64_t)bytes;
        break;
    case BLOCK_COPY_SKIP:
        s->stats.bytes_skipped += (uint64_t)bytes;
        break;
    }
    progress_front_done(&s->front, offset, bytes);
}

/* ---- The job ---- */

/* QEMU's: what one step of its commit loop copies at most. */
#define COMMIT_BUFFER_SIZE (512 * 1024)

/* Ranges unallocated at once: a cancel is seen between them. */
#define COMMIT_PUNCH_CHUNK (16 * 1024 * 1024)

/*
 * x-strata-discard-source: base holds the chain's data durably (flushed),
 * so the merged images give their clusters up.  The image right above
 * base goes first: at every step the unchanged chain still reads what it
 * read before (an unallocated range of an image falls through to images
 * already emptied, down to base), so a cancel or failure here leaves the
 * guest's data as it was.
 */
static int coroutine_fn commit_punch(CommitJob *s, GError **errp)
{
    for (guint i = s->punch_edges->len; i > 0; i--) {
        BlockChild *c = g_ptr_array_index(s->punch_edges, i - 1);
        BlockNode *bs = child_node(c);
        int64_t len = node_getlength(bs);

        if (len < 0) {
            error_setg_errno(errp, (int)-len, "Could not inquire the size "
                             "of '%s'", node_get_name(bs));
            return (int)len;
        }
        for (int64_t off = 0; off < len; off += COMMIT_PUNCH_CHUNK) {
            if (job_is_cancelled(&s->common.job)) {
                return -ECANCELED;
            }
            int ret = child_co_unallocate(c, off,
                                          MIN(COMMIT_PUNCH_CHUNK, len - off),
                                          NULL);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Could not discard the "
                                 "committed data from '%s'",
                                 node_get_name(bs));
                return ret;
            }
        }
    }
    return 0;
}

static int coroutine_fn commit_run(Job *job, GError **errp)
{
    CommitJob *s = (CommitJob *)job;
    int64_t base_len;
    int ret;

    s->length = blk_getlength(s->top_blk);
    if (s->length < 0) {
        return (int)s->length;
    }
    job_progress_set_remaining(job, (uint64_t)s->length);
    base_len = blk_getlength(s->base_blk);
    if (base_len < 0) {
        return (int)base_len;
    }
    if (base_len < s->length) {
        ret = blk_co_truncate(s->base_blk, s->length, false,
                              PREALLOC_MODE_OFF, errp);
        if (ret < 0) {
            return ret;
        }
    }

    BlockCopyOptions o = {
        .source = blk_root(s->top_blk),
        .target = blk_root(s->base_blk),
        .classify = s->copy_only ? commit_classify_copy : commit_classify,
        .classify_opaque = s,
        .unmap = s->copy_only,
        .progress = commit_progress,
        .progress_opaque = s,
        /* base is flushed at the end: its writes start while we copy. */
        .write_behind = COMMIT_WRITE_BEHIND,
    };
    if (s->copy_only) {
        BlockDriverInfo bdi = { 0 };

        /* The mirror's granularity: base's cluster size, at least 4 KiB. */
        if (node_get_info(s->base, &bdi) == 0 && bdi.cluster_size > 0) {
            s->base_cluster = bdi.cluster_size;
            o.granularity = MAX(4096, bdi.cluster_size);
        } else {
            o.granularity = 65536;
        }
        /*
         * Where base's clusters land in its file must not depend on the
         * order in which concurrent requests complete (qemu-img's images,
         * byte for byte): the ranges go one after the other.
         */
        o.max_workers = 1;
    } else {
        /*
         * Whole chunks from the first one, and the progress as far as the
         * disk is done without a gap (progress-front.c): a commit that
         * fails in its first MiB reports 0 as QEMU's (QEMU 040).  Under a
         * speed limit the chunks are QEMU's COMMIT_BUFFER_SIZE, so that
         * the limit is charged in QEMU's steps (QEMU 141: speed 1,
         * cancelled at 512 KiB); without one they stay the engine's 1 MiB
         * (512 KiB cost 18% more CPU, bench/job-ab commit-mid), and an
         * error past the first MiB is reported at the start of its MiB
         * where QEMU may say 512 KiB further.
         */
        BlockDriverInfo bdi = { 0 };

        if (job->speed) {
            o.max_chunk = COMMIT_BUFFER_SIZE;
            /* Not below the engine's granularity, base's cluster size. */
            if (node_get_info(s->base, &bdi) == 0 &&
                bdi.cluster_size > COMMIT_BUFFER_SIZE) {
                o.max_chunk = bdi.cluster_size;
            }
        }
        o.fixed_chunk = true;
        /*
         * Data by copy_file_range where top's and base's data are in
         * files (as mirror, jobs/mirror.c); not for copy_only (offline
         * strata-img commit), whose base must match qemu-img's byte for
         * byte and so gets no clusters allocated by a refused offload.
         */
        o.use_copy_range = true;
    }
    progress_front_init(&s->front, job);
    s->bcs = block_copy_new(&o, errp);
    if (!s->bcs) {
        return -EINVAL;
    }

    for (;;) {
        bool is_read = false;

        ret = block_copy_run(s->bcs, job, &is_read);
        if (ret == 0 || job_is_cancelled(job)) {
            break;
        }
        if (block_job_error_action(&s->common, s->on_error, is_read, -ret) ==
            BLOCK_ERROR_ACTION_REPORT) {
            return ret;
        }
        /* ignore and stop: the range is still marked, try it again */
        job_pause_point(job);
    }
    if (job_is_cancelled(job)) {
        return -ECANCELED;
    }
    /* What base holds now is what the chain will read from it. */
    ret = blk_co_flush(s->base_blk);
    if (ret < 0 || !s->discard_source) {
        return ret;
    }
    return commit_punch(s, errp);
}

/* Put top back in the filter's place, as it was before the job. */
static void remove_filter(CommitJob *s)
{
    if (s->commit_top) {
        GError *err = NULL;
        if (!node_replace(s->commit_top, s->top, &err)) {
            warn_print("%s", err->message);
            g_error_free(err);
        }
    }
}

static void release_chain(CommitJob *s)
{
    if (s->chain_frozen) {
        chain_unfreeze(s->commit_top, s->base, s->owner);
        s->chain_frozen = false;
    }
    if (s->base_blk) {
        blk_unref(s->base_blk);
        s->base_blk = NULL;
    }
}

/* An overlay of the dropped images now names base, as QEMU's
 * bdrv_child_cb_update_filename (read-only overlays are reopened). */
static bool update_overlay(BlockNode *parent, const char *file,
                           const char *fmt, GError **errp)
{
    bool ro = node_is_read_only(parent);
    int ret;

    if (ro && !node_reopen(parent, NULL, false, errp)) {
        return false;
    }
    ret = node_change_backing_file(parent, file, fmt, false, NULL);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not update backing file link");
    }
    if (ro) {
        node_reopen(parent, NULL, true, NULL);
    }
    return ret >= 0;
}

/* QEMU's bdrv_drop_intermediate(commit_top, base, backing_file). */
static int drop_intermediate(CommitJob *s, GError **errp)
{
    GSList *parents = NULL;
    const char *file;
    int ret = 0;

    /*
     * As QEMU, base's name as the graph is now (a json: name when its own
     * backing is overridden).
     */
    if (!s->backing_file) {
        node_refresh_filename_tree(s->base);
    }
    file = s->backing_file ? s->backing_file : node_get_filename(s->base);

    /*
     * The overlays, referenced: updating one reopens it, whose drain runs
     * the loop, where another job (a stream dropping that overlay) may
     * complete and close nodes and edges; one no longer backed by base is
     * left alone.
     */
    for (BlockChild *c = node_next_parent(s->commit_top, NULL); c;
         c = node_next_parent(s->commit_top, c)) {
        if (child_parent_kind(c) == PARENT_NODE &&
            node_backing_child(child_parent(c)) == c) {
            node_ref(child_parent(c));
            parents = g_slist_prepend(parents, child_parent(c));
        }
    }
    if (!node_replace(s->commit_top, s->base, errp)) {
        g_slist_free_full(parents, (GDestroyNotify)node_unref);
        return -EPERM;
    }
    for (GSList *l = parents; l && !ret; l = l->next) {
        BlockNode *parent = l->data;
        BlockChild *b = node_backing_child(parent);
        if (b && b->bs == s->base &&
            !update_overlay(parent, file, node_get_format_name(s->base),
                            errp)) {
            ret = -EIO;
        }
    }
    g_slist_free_full(parents, (GDestroyNotify)node_unref);
    return ret;
}

static int commit_prepare(Job *job)
{
    CommitJob *s = (CommitJob *)job;
    GError *err = NULL;
    int ret;

    release_chain(s);
    if (s->copy_only) {
        /* The graph as it was: the job's edges first, as in abort. */
        job_remove_all_nodes(job);
        remove_filter(s);
        return 0;
    }
    /* x-strata-merge-bitmaps: before the dropped images may go. */
    if (s->merge_bitmaps) {
        for (BlockNode *n = s->top; n && n != s->base; n = filter_or_cow(n)) {
            bitmaps_merge_into(s->base, n);
        }
    }
    ret = drop_intermediate(s, &err);
    if (ret < 0) {
        warn_print("%s", err->message);
        g_error_free(err);
    }
    return ret;
}

static void commit_abort(Job *job)
{
    CommitJob *s = (CommitJob *)job;

    release_chain(s);
    /* The job's blockers on the merged images go before the filter. */
    job_remove_all_nodes(job);
    remove_filter(s);
}

static void commit_clean(Job *job)
{
    CommitJob *s = (CommitJob *)job;

    if (s->reopened) {
        /* The job's writing edges go first, then the images are read-only
         * again as they were (whether still in the chain or dropped). */
        job_remove_all_nodes(job);
        discard_source_restore(s->reopened);
        g_ptr_array_free(s->reopened, true);
        s->reopened = NULL;
    }

    if (s->base_read_only) {
        node_reopen(s->base, NULL, true, NULL);
        s->base_read_only = false;
    }
    if (s->bcs) {
        block_copy_free(s->bcs);
        s->bcs = NULL;
    }
    if (s->top_blk) {
        blk_unref(s->top_blk);
        s->top_blk = NULL;
    }
}

static void commit_free(Job *job)
{
    CommitJob *s = (CommitJob *)job;

    if (s->commit_top) {
        node_unref(s->commit_top);
    }
    node_unref(s->top);
    node_unref(s->base);
    g_free(s->owner);
    g_free(s->backing_file);
    progress_front_destroy(&s->front);
    if (s->punch_edges) {
        g_ptr_array_free(s->punch_edges, true);
    }
}

/* A drain or job-pause waits for the copies in flight: no idle class. */
static void commit_pause_wanted(Job *job)
{
    CommitJob *s = (CommitJob *)job;

    if (s->bcs) {
        block_copy_promote(s->bcs);
    }
}

static const JobDriver commit_job_driver = {
    .instance_size = sizeof(CommitJob),
    .job_type = JOB_TYPE_COMMIT,
    .run = commit_run,
    .user_resume = block_job_user_resume,
    .prepare = commit_prepare,
    .abort = commit_abort,
    .clean = commit_clean,
    .free = commit_free,
    .pause_wanted = commit_pause_wanted,
};

/* ---- Start ---- */

/* The filter above top: every parent of top now reads through it. */
static bool insert_filter(CommitJob *s, const char *name, GError **errp)
{
    json_t *opts = json_pack("{s:s, s:s}", "driver", "commit_top",
                             "backing", node_get_name(s->top));

    if (name) {
        json_object_set_new(opts, "node-name", json_string(name));
    }
    register_filter();
    uint64_t perm, shared;

    /* Read-only like QEMU's, unless top has writers that move up to it
     * (strata-img's own backend on the image it commits). */
    node_get_cumulative_perm(s->top, &perm, &shared);
    s->commit_top = node_open(NULL, opts,
                              perm & (BLK_PERM_WRITE |
                                      BLK_PERM_WRITE_UNCHANGED)
                              ? NODE_O_RDWR : 0, errp);
    if (!s->commit_top) {
        return false;
    }
    if (!name) {
        node_set_implicit(s->commit_top);
    }
    if (!node_replace(s->top, s->commit_top, errp)) {
        node_unref(s->commit_top);
        s->commit_top = NULL;
        return false;
    }
    return true;
}

static bool attach_chain(CommitJob *s, GError **errp)
{
    BlockNode *skip_base = node_skip_filters(s->base);
    BlockNode *above = s->commit_top;

    for (BlockNode *it = s->top; it && it != s->base; it = filter_or_cow(it)) {
        uint64_t shared = BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED;
        bool punch = s->discard_source && !node_filtered_child(it);
        /* Filters right above base show base's data: reads stay valid. */
        if (node_skip_filters(it) == skip_base) {
            shared |= BLK_PERM_CONSISTENT_READ;
        }
        if (punch && !discard_source_prepare(it, s->reopened, errp)) {
            return false;
        }
        BlockChild *edge = job_add_node(&s->common.job, "intermediate node",
                                        it, punch ? BLK_PERM_WRITE : 0,
                                        shared, errp);
        if (!edge) {
            return false;
        }
        if (s->discard_source &&
            !discard_source_check_users(it, above, edge, errp)) {
            return false;
        }
        if (punch) {
            g_ptr_array_add(s->punch_edges, edge);
        }
        above = it;
    }
    if (!chain_freeze(s->commit_top, s->base, s->owner, errp)) {
        return false;
    }
    s->chain_frozen = true;
    return job_add_node(&s->common.job, "base", s->base, 0, BLK_PERM_ALL,
                        errp) != NULL;
}

static bool open_backends(CommitJob *s, int64_t base_size, int64_t top_size,
                          GError **errp)
{
    uint64_t perm = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE;
    uint64_t shared = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;

    if (s->copy_only) {
        /*
         * qemu-img's active commit writes base as a mirror target that is
         * the source's backing file: it shares writes and consistent
         * reads and takes no consistent read (the image locks it leaves
         * to other processes are those).
         */
        perm = BLK_PERM_WRITE;
        shared |= BLK_PERM_WRITE;
    }
    if (base_size < top_size) {
        perm |= BLK_PERM_RESIZE;
    }
    s->base_blk = blk_new(perm, shared);
    if (!blk_insert_node(s->base_blk, s->base, errp)) {
        return false;
    }
    /* Reads only; the job's edges hold what it needs on the chain. */
    s->top_blk = blk_new(0, BLK_PERM_ALL);
    return blk_insert_node(s->top_blk, s->top, errp);
}

BlockJob *commit_start(const CommitOptions *o, GError **errp)
{
    int64_t base_size, top_size;
    CommitJob *s;

    if (node_skip_filters(o->top) == node_skip_filters(o->base)) {
        error_setg(errp, "Invalid files for merge: top and base are the "
                   "same");
        return NULL;
    }
    base_size = node_getlength(o->base);
    if (base_size < 0) {
        error_setg_errno(errp, (int)-base_size,
                         "Could not inquire base image size");
        return NULL;
    }
    top_size = node_getlength(o->top);
    if (top_size < 0) {
        error_setg_errno(errp, (int)-top_size,
                         "Could not inquire top image size");
        return NULL;
    }

    s = block_job_create(o->job_id, &commit_job_driver, NULL, o->bs, 0,
                         BLK_PERM_ALL, o->speed, o->creation_flags, o->cb,
                         o->opaque, errp);
    if (!s) {
        return NULL;
    }
    node_ref(o->top);
    node_ref(o->base);
    s->top = o->top;
    s->base = o->base;
    s->base_overlay = find_base_overlay(o->top, o->base);
    if (s->base_overlay && node_backing(s->base_overlay) == o->base) {
        /* No filter over base: the chain down to base says the same. */
        s->base_overlay = NULL;
    }
    s->owner = g_strdup_printf("commit job '%s'",
                               s->common.job.id ? s->common.job.id : "");
    s->backing_file = g_strdup(o->backing_file);
    s->on_error = o->on_error;
    s->copy_only = o->copy_only;
    s->skip_identical = o->skip_identical;
    s->merge_bitmaps = o->merge_bitmaps && !o->copy_only;
    s->discard_source = o->discard_source && !o->copy_only;
    if (s->discard_source) {
        s->punch_edges = g_ptr_array_new();
        s->reopened = g_ptr_array_new();
    }

    s->base_read_only = node_is_read_only(o->base);
    if (s->base_read_only && !node_reopen(o->base, NULL, false, errp)) {
        s->base_read_only = false;
        goto fail;
    }
    if (!insert_filter(s, o->filter_node_name, errp) ||
        !attach_chain(s, errp) ||
        !open_backends(s, base_size, top_size, errp)) {
        goto fail;
    }
    job_start(&s->common.job);
    return &s->common;

fail:
    release_chain(s);
    if (s->top_blk) {
        blk_unref(s->top_blk);
        s->top_blk = NULL;
    }
    if (s->reopened) {
        commit_clean(&s->common.job);
    }
    if (s->base_read_only) {
        node_reopen(o->base, NULL, true, NULL);
        s->base_read_only = false;
    }
    {
        /* The filter goes after the job, whose edges block its removal. */
        BlockNode *filter = s->commit_top;
        s->commit_top = NULL;
        node_ref(o->top);
        job_early_fail(&s->common.job);
        if (filter) {
            GError *err = NULL;
            if (!node_replace(filter, o->top, &err)) {
                warn_print("%s", err->message);
                g_error_free(err);
            }
            node_unref(filter);
        }
        node_unref(o->top);
    }
    return NULL;
}

void commit_get_stats(BlockJob *job, CommitStats *st)
{
    *st = ((CommitJob *)job)->stats;
}

/* ---- Finding an image by name (QEMU's bdrv_find_backing_image) ---- */

static bool has_protocol(const char *path)
{
    size_t len = strcspn(path, ":/");

    return path[len] == ':';
}

/* `name` as the image `bs` would resolve it: relative to its directory. */
static char *resolve_against(BlockNode *bs, const char *name)
{
    char *dir, *path;

    if (g_path_is_absolute(name)) {
        return g_strdup(name);
    }
    dir = g_path_get_dirname(node_get_filename(bs));
    path = g_build_filename(dir, name, NULL);
    g_free(dir);
    return path;
}

BlockNode *node_find_backing_image(BlockNode *top, const char *name)
{
    bool protocol = has_protocol(name);

    for (BlockNode *cur = node_skip_filters(top); cur && node_backing(cur);
         cur = node_skip_filters(node_backing(cur))) {
        BlockNode *below = node_skip_filters(node_backing(cur));

        /*
         * The header's name says nothing about a backing node given in its
         * place: only that node's own filename can match then.
         */
        if (node_backing_overridden(cur)) {
            if (!strcmp(name, node_get_filename(below))) {
                return below;
            }
            continue;
        }
        if (protocol || has_protocol(node_backing_file(cur))) {
            if (!strcmp(name, node_backing_file(cur)) ||
                !strcmp(name, node_get_filename(below))) {
                return below;
            }
        } else {
            char *want = resolve_against(cur, name);
            char *have = node_get_full_backing_filename(cur);
            char *want_real = want ? realpath(want, NULL) : NULL;
            char *have_real = have ? realpath(have, NULL) : NULL;
            bool match = want_real && have_real &&
                         !strcmp(want_real, have_real);

            free(want_real);
            free(have_real);
            g_free(want);
            g_free(have);
            if (match) {
                return below;
            }
        }
    }
    return NULL;
}
