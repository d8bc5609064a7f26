/*
 * The backup job (strata/backup.h).  Creation inserts a copy-before-write
 * filter above the source (its main node), and attaches to the target
 * (QEMU's op blocker: another block job cannot use it).  run():
 *   full/top  block_copy_run() until nothing is left; an I/O error goes
 *             to the on-source-error / on-target-error policy (report:
 *             fail; ignore: go again; stop: pause, go again on resume);
 *   top       the engine skips what the source's top image does not
 *             allocate (a classify callback), whole clusters as QEMU;
 *   none      wait for the cancel: the filter copies what the guest
 *             overwrites meanwhile.
 *   bitmap    what the sync bitmap marks, at the engine's granularity
 *             (see "Sync bitmap" below);
 * clean() takes the filter out again.  Progress counts what the engine
 * copies in the background and for the filter alike; skipped ranges
 * (top) are taken off the total.
 */
#include <errno.h>
#include <limits.h>

#include "strata/backup.h"
#include "strata/block-copy.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/copy-before-write.h"
#include "strata/dirty-bitmap.h"
#include "strata/error.h"
#include "strata/loop.h"
#include "strata/op-blockers.h"

/*
 * What the engine's callbacks need: they may run as soon as the filter is
 * in the graph, before the job exists, so they do not hang off the job.
 */
typedef struct BackupShared {
    Job *job;                    /* NULL until the job is created */
    BlockNode *source;
    BlockCopyState *bcs;         /* NULL until the filter is in place */
    int64_t len;
    bool top;                    /* sync=top: skips are not progress */
    uint64_t skipped;            /* top: bytes the engine dropped */
    uint64_t total;              /* the first estimate, before skips */
} BackupShared;

typedef struct BackupJob {
    BlockJob common;
    BlockNode *cbw, *source, *target;
    BackupSyncMode sync;
    BlockdevOnError on_source_error, on_target_error;
    BlockCopyState *bcs;
    BackupShared *shared;
    /* nbm: the sync bitmap (with its successor until commit/abort). */
    DirtyBitmap *sync_bitmap;
    BackupBitmapMode bitmap_mode;
} BackupJob;

static void backup_progress(void *opaque, int64_t offset, int64_t bytes,
                            BlockCopyKind kind)
{
    BackupShared *sh = opaque;

    if (!sh->job) {
        return;
    }
    /* QEMU counts whole clusters, the image's last one too. */
    if (sh->bcs && offset + bytes == sh->len) {
        int64_t gran = block_copy_granularity(sh->bcs);
        bytes += (gran - sh->len % gran) % gran;
    }
    if (kind == BLOCK_COPY_SKIP && sh->top) {
        sh->skipped += (uint64_t)bytes;
        uint64_t left = sh->total - MIN(sh->total, sh->skipped +
                                        sh->job->progress_current);
        job_progress_set_remaining(sh->job, left);
        return;
    }
    job_progress_update(sh->job, (uint64_t)bytes);
}

/*
 * sync=top: a cluster is copied if the top image allocates any part of
 * it (QEMU's block_copy_reset_unallocated), else skipped.
 */
static int coroutine_fn backup_classify_top(void *opaque, int64_t offset,
                                            int64_t bytes, int64_t *pnum)
{
    BackupShared *sh = opaque;
    int64_t gran = sh->bcs ? block_copy_granularity(sh->bcs) : 1;
    int64_t end = offset + bytes, pos = offset, n = 0;
    int ret = 0;

    /* The first byte the top image allocates. */
    while (pos < end) {
        ret = node_co_is_allocated(sh->source, pos, end - pos, &n);
        if (ret < 0) {
            return ret;
        }
        if (ret || n <= 0) {
            break;
        }
        pos += n;
    }
    if (!ret || pos >= end) {
        *pnum = bytes;
        return BLOCK_COPY_SKIP;
    }
    int64_t cluster = pos - pos % gran;
    if (cluster > offset) {
        *pnum = cluster - offset;
        return BLOCK_COPY_SKIP;
    }
    /* The allocated run, out to whole clusters. */
    int64_t data_end = (pos + n + gran - 1) / gran * gran;
    *pnum = MIN(data_end, end) - offset;
    return BLOCK_COPY_DATA;
}

/* ---- Sync bitmap (nbm) ----
 *
 * QEMU 7.2's way: at creation the bitmap gets a successor (it is busy and
 * frozen; the writes of the job's life go to the successor).  sync=bitmap
 * starts the engine from the bitmap's dirty chunks, widened to whole
 * clusters of the engine.  At the end, as bitmap-mode says:
 *   success, or failure with 'always'  abdicate: the bitmap is now the
 *                                      successor (only what was written
 *                                      during the job);
 *   failure with 'on-success', and     reclaim: the successor is merged
 *   'never' always                     back, nothing is lost;
 *   failure with 'always'              and what the engine had not copied
 *                                      is marked again.
 */
static void backup_init_sync_bitmap(BackupJob *s)
{
    DirtyBitmap *copy = block_copy_bitmap(s->bcs);

    dirty_bitmap_clear(copy);
    dirty_bitmap_merge_internal(copy, s->sync_bitmap);
}

static void backup_end_sync_bitmap(BackupJob *s, bool ok)
{
    DirtyBitmap *bm = s->sync_bitmap;

    if (!bm) {
        return;
    }
    s->sync_bitmap = NULL;
    /* The node's bitmap list changes: no write of an iothread may walk
     * it meanwhile (the main loop's own writes cannot interleave). */
    BlockNode *bs = dirty_bitmap_node(bm);
    bool drain = node_loop(bs) != loop_main();
    if (drain) {
        node_drain_begin(bs);
    }
    if ((ok || s->bitmap_mode == BACKUP_BITMAP_ALWAYS) &&
        s->bitmap_mode != BACKUP_BITMAP_NEVER) {
        bm = dirty_bitmap_abdicate(bm);
    } else {
        bm = dirty_bitmap_reclaim(bm);
    }
    if (!ok && s->bitmap_mode == BACKUP_BITMAP_ALWAYS && s->bcs) {
        dirty_bitmap_merge_internal(bm, block_copy_bitmap(s->bcs));
    }
    if (drain) {
        node_drain_end(bs);
    }
}

static void backup_commit(Job *job)
{
    backup_end_sync_bitmap((BackupJob *)job, true);
}

static void backup_abort(Job *job)
{
    backup_end_sync_bitmap((BackupJob *)job, false);
}
/* ---- end of sync bitmap ---- */

static int coroutine_fn backup_run(Job *job, GError **errp)
{
    BackupJob *s = (BackupJob *)job;

    (void)errp;
    if (s->sync == BACKUP_SYNC_BITMAP) {
        backup_init_sync_bitmap(s);
    }
    /* Whole clusters, the last one even past the end, as QEMU counts. */
    s->shared->total = (uint64_t)dirty_bitmap_count(block_copy_bitmap(s->bcs));
    job_progress_set_remaining(job, s->shared->total);

    if (s->sync == BACKUP_SYNC_NONE) {
        /* Every cluster may be copied, none has to: the filter serves
         * the guest's writes until the job is cancelled. */
        while (!job_is_cancelled(job)) {
            job_yield(job);
        }
        return 0;
    }
    for (;;) {
        bool error_is_read = false;
        int ret = block_copy_run(s->bcs, job, &error_is_read);

        if (ret == 0 || job_is_cancelled(job)) {
            return 0;
        }
        BlockErrorAction act = block_job_error_action(
            &s->common,
            error_is_read ? s->on_source_error : s->on_target_error,
            error_is_read, -ret);
        if (act == BLOCK_ERROR_ACTION_REPORT) {
            return ret;
        }
        if (act == BLOCK_ERROR_ACTION_STOP) {
            job_pause_point(job);
        }
        /* ignore, or resumed after stop: the failed range is still
         * marked, so the engine tries it again. */
    }
}

/*
 * The block job keeps its main node (the filter) referenced until it is
 * dismissed; QEMU's filter is gone at clean, so the job holds the source
 * instead from then on, and the filter goes now.
 */
static void backup_drop_filter(BackupJob *s)
{
    BlockNode *cbw = s->cbw;

    s->cbw = NULL;
    job_remove_all_nodes(&s->common.job);
    if (s->common.bs == cbw) {
        node_ref(s->source);
        s->common.bs = s->source;
        node_unref(cbw);  /* the block job's reference */
    }
    /* else a job dismissed before it was set up: the block job layer
     * has dropped its reference already. */
    cbw_drop(cbw);        /* ours, from cbw_append() */
}

static void backup_clean(Job *job)
{
    backup_drop_filter((BackupJob *)job);
}

static void backup_free(Job *job)
{
    BackupJob *s = (BackupJob *)job;

    if (s->cbw) {
        /* Never cleaned: created, then failed before it started. */
        backup_end_sync_bitmap(s, false);
        backup_drop_filter(s);
    }
    g_free(s->shared);
}

/*
 * QEMU's backup_cancel: every cancel is forced; copies waiting for the
 * target (an NBD server's return) fail now.
 */
static bool backup_cancel(Job *job, bool force)
{
    (void)force;
    node_cancel_in_flight(((BackupJob *)job)->target);
    return true;
}

/* A drain or job-pause waits for the copies in flight: no idle class. */
static void backup_pause_wanted(Job *job)
{
    BackupJob *s = (BackupJob *)job;

    if (s->bcs) {
        block_copy_promote(s->bcs);
    }
}

static const JobDriver backup_job_driver = {
    .instance_size = sizeof(BackupJob),
    .job_type = JOB_TYPE_BACKUP,
    .run = backup_run,
    .user_resume = block_job_user_resume,
    .commit = backup_commit,
    .abort = backup_abort,
    .clean = backup_clean,
    .cancel = backup_cancel,
    .free = backup_free,
    .pause_wanted = backup_pause_wanted,
};

/* QEMU's bdrv_supports_compressed_writes: every filter on the way too. */
static bool supports_compressed_writes(BlockNode *bs)
{
    while (bs) {
        if (!driver_has(node_get_driver(bs), DRIVER_CAN_COMPRESS)) {
            return false;
        }
        bs = node_filtered_child(bs);
    }
    return true;
}

BlockJob *backup_job_create(const char *job_id, BlockNode *bs,
                            BlockNode *target, const BackupOptions *o,
                            JobTxn *txn, GError **errp)
{
    BackupShared *sh;
    BlockCopyState *bcs = NULL;
    BlockNode *cbw;
    BackupJob *job;
    int64_t len, target_len, cluster_size;

    if (bs == target) {
        error_setg(errp, "Source and target cannot be the same");
        return NULL;
    }
    if (!node_is_inserted(bs)) {
        error_setg(errp, "Device is not inserted: %s", node_device_name(bs));
        return NULL;
    }
    if (!node_is_inserted(target)) {
        error_setg(errp, "Device is not inserted: %s",
                   node_device_name(target));
        return NULL;
    }
    if (o->compress && !supports_compressed_writes(target)) {
        error_setg(errp, "Compression is not supported for this drive %s",
                   node_device_name(target));
        return NULL;
    }
    if (!node_op_check(bs, BLOCK_OP_BACKUP_SOURCE, errp) ||
        !node_op_check(target, BLOCK_OP_BACKUP_TARGET, errp)) {
        return NULL;
    }
    if (o->perf.max_workers < 1 || o->perf.max_workers > INT_MAX) {
        error_setg(errp, "max-workers must be between 1 and %d", INT_MAX);
        return NULL;
    }
    if (o->perf.max_chunk < 0) {
        error_setg(errp, "max-chunk must be zero (which means no limit) or "
                   "positive");
        return NULL;
    }
    /* nbm: a bitmap the job will change must be writable; then it gets
     * its successor (busy from here on; reclaimed on any failure). */
    if (o->sync_bitmap) {
        if (o->bitmap_mode != BACKUP_BITMAP_NEVER &&
            dirty_bitmap_check(o->sync_bitmap, DIRTY_BITMAP_DEFAULT, errp)) {
            return NULL;
        }
        if (!dirty_bitmap_create_successor(o->sync_bitmap, errp)) {
            return NULL;
        }
    }
    len = node_getlength(bs);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Unable to get length for '%s'",
                         node_get_name(bs));
        goto fail_bitmap;
    }
    target_len = node_getlength(target);
    if (target_len < 0) {
        error_setg_errno(errp, (int)-target_len,
                         "Unable to get length for '%s'", node_get_name(bs));
        goto fail_bitmap;
    }
    if (target_len != len) {
        error_setg(errp, "Source and target image have different sizes");
        goto fail_bitmap;
    }

    sh = g_new0(BackupShared, 1);
    sh->source = bs;
    sh->len = len;
    sh->top = o->sync == BACKUP_SYNC_TOP;
    CbwCopyOptions copts = {
        .compress = o->compress,
        .use_copy_range = o->perf.use_copy_range,
        .max_workers = (int)o->perf.max_workers,
        .max_chunk = o->perf.max_chunk,
        .classify = o->sync == BACKUP_SYNC_TOP ? backup_classify_top : NULL,
        .classify_opaque = sh,
        .progress = backup_progress,
        .progress_opaque = sh,
    };
    /* The filter's open warns of a target without a block size (qsd's
     * warning comes from there too). */
    cbw = cbw_append(bs, target, o->filter_node_name, &copts, &bcs, errp);
    if (!cbw) {
        g_free(sh);
        goto fail_bitmap;
    }
    sh->bcs = bcs;
    cluster_size = block_copy_granularity(bcs);
    if (o->perf.max_chunk && o->perf.max_chunk < cluster_size) {
        error_setg(errp, "Required max-chunk (%" G_GINT64_FORMAT ") is less "
                   "than backup cluster size (%" G_GINT64_FORMAT ")",
                   o->perf.max_chunk, cluster_size);
        cbw_drop(cbw);
        g_free(sh);
        goto fail_bitmap;
    }

    /* The filter takes what the copy needs; the job only holds both. */
    job = block_job_create(job_id, &backup_job_driver, txn, cbw, 0,
                           BLK_PERM_ALL, o->speed, o->creation_flags, NULL,
                           NULL, errp);
    if (!job) {
        cbw_drop(cbw);
        g_free(sh);
        goto fail_bitmap;
    }
    job->cbw = cbw;
    job->source = bs;
    job->target = target;
    job->sync = o->sync;
    job->on_source_error = o->on_source_error;
    job->on_target_error = o->on_target_error;
    job->bcs = bcs;
    job->shared = sh;
    job->sync_bitmap = o->sync_bitmap;
    job->bitmap_mode = o->bitmap_mode;
    sh->job = &job->common.job;
    if (!job_add_node(&job->common.job, "target", target, 0, BLK_PERM_ALL,
                      errp)) {
        job_early_fail(&job->common.job);
        return NULL;
    }
    return &job->common;

fail_bitmap:
    if (o->sync_bitmap) {
        dirty_bitmap_reclaim(o->sync_bitmap);
    }
    return NULL;
}
