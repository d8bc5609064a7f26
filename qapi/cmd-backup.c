/*
 * drive-backup and blockdev-backup, as commands and as transaction
 * actions (a command is a transaction of one, as in QEMU 7.2): the
 * arguments, their defaults and checks in QEMU's order and words
 * (blockdev.c's do_backup_common, drive_backup_prepare,
 * blockdev_backup_prepare), then backup_job_create() (jobs/backup.c).
 *
 * The source stays drained from prepare to clean, and the job is started
 * at commit, so that it sees nothing of the other actions half done.  A
 * job created over a drained node is paused by that drain in QEMU
 * (created, running, paused, running around the reply): here the drain
 * only covers the nodes that were there when it began, so the action
 * pauses the new job itself for as long as its source is drained.
 *
 * Backups with a dirty bitmap: sync 'incremental' is 'bitmap' with
 * bitmap-mode 'on-success'; the bitmap (any sync but none) goes to the
 * job with its mode (jobs/backup.c: the successor and what becomes of the
 * bitmap at the end).
 */
#include <string.h>

#include "block-job-args.h"
#include "job-settle.h"
#include "transaction.h"
#include "strata/backup.h"
#include "strata/block-ops.h"
#include "strata/dirty-bitmap.h"
#include "strata/error.h"
#include "strata/op-blockers.h"
#include "../tools/common/create-opts.h"
#include "qapi-commands.h"

typedef struct BackupAction {
    BlockNode *bs;              /* referenced and drained until clean */
    /*
     * Referenced until clean: the later actions' drains run the loop,
     * where another client's job-cancel may end the job (not yet started,
     * it concludes and is dismissed at once).
     */
    BlockJob *job;
    bool job_paused;            /* paused for the drain (see above) */
} BackupAction;

/*
 * QMP errors carry no hint lines (the library's "Is another process using
 * the image" line is for people).
 */
static void drop_hint(GError **errp)
{
    char *nl = errp && *errp ? strchr((*errp)->message, '\n') : NULL;

    if (nl) {
        *nl = '\0';
    }
}

/* QEMU's do_backup_common() bitmap checks; *bmp: the bitmap or NULL.
 * b->sync 'incremental' becomes 'bitmap' with mode 'on-success'. */
static bool check_bitmap_args(BackupCommon *b, BlockNode *bs,
                              DirtyBitmap **bmp, GError **errp)
{
    MirrorSyncMode sync = b->sync;
    DirtyBitmap *bm;

    *bmp = NULL;
    if ((sync == MIRROR_SYNC_MODE_BITMAP ||
         sync == MIRROR_SYNC_MODE_INCREMENTAL) && !b->bitmap) {
        error_setg(errp, "must provide a valid bitmap name for '%s' sync "
                   "mode", MirrorSyncMode_str(sync));
        return false;
    }
    if (sync == MIRROR_SYNC_MODE_INCREMENTAL) {
        if (b->has_bitmap_mode &&
            b->bitmap_mode != BITMAP_SYNC_MODE_ON_SUCCESS) {
            error_setg(errp, "Bitmap sync mode must be '%s' when using sync "
                       "mode '%s'",
                       BitmapSyncMode_str(BITMAP_SYNC_MODE_ON_SUCCESS),
                       MirrorSyncMode_str(sync));
            return false;
        }
        sync = MIRROR_SYNC_MODE_BITMAP;
        b->sync = sync;
        b->has_bitmap_mode = true;
        b->bitmap_mode = BITMAP_SYNC_MODE_ON_SUCCESS;
    }
    if (b->bitmap) {
        bm = node_find_dirty_bitmap(bs, b->bitmap);
        if (!bm) {
            error_setg(errp, "Bitmap '%s' could not be found", b->bitmap);
            return false;
        }
        if (!b->has_bitmap_mode) {
            error_setg(errp, "Bitmap sync mode must be given when providing "
                       "a bitmap");
            return false;
        }
        if (dirty_bitmap_check(bm, DIRTY_BITMAP_ALLOW_RO, errp)) {
            drop_hint(errp);
            return false;
        }
        if (sync == MIRROR_SYNC_MODE_NONE) {
            error_setg(errp, "sync mode '%s' does not produce meaningful "
                       "bitmap outputs", MirrorSyncMode_str(sync));
            return false;
        }
        if (b->has_bitmap_mode && b->bitmap_mode == BITMAP_SYNC_MODE_NEVER &&
            sync != MIRROR_SYNC_MODE_BITMAP) {
            error_setg(errp, "Bitmap sync mode '%s' has no meaningful effect "
                       "when combined with sync mode '%s'",
                       BitmapSyncMode_str(b->bitmap_mode),
                       MirrorSyncMode_str(sync));
            return false;
        }
        *bmp = bm;
        return true;
    }
    if (b->has_bitmap_mode) {
        error_setg(errp, "Cannot specify bitmap sync mode without a bitmap");
        return false;
    }
    return true;
}

/* QEMU's do_backup_common(): defaults, bitmap checks, the job. */
static BlockJob *do_backup_common(BackupCommon *b, BlockNode *bs,
                                  BlockNode *target, JobTxn *txn,
                                  GError **errp)
{
    BackupOptions o = {
        .speed = b->has_speed ? b->speed : 0,
        .compress = b->has_compress && b->compress,
        .filter_node_name = b->filter_node_name,
        .perf = { .use_copy_range = false, .max_workers = 64 },
        .on_source_error = b->has_on_source_error ? b->on_source_error
                                                  : BLOCKDEV_ON_ERROR_REPORT,
        .on_target_error = b->has_on_target_error ? b->on_target_error
                                                  : BLOCKDEV_ON_ERROR_REPORT,
        .creation_flags = JOB_DEFAULT,
    };

    if (b->x_perf) {
        if (b->x_perf->has_use_copy_range) {
            o.perf.use_copy_range = b->x_perf->use_copy_range;
        }
        if (b->x_perf->has_max_workers) {
            o.perf.max_workers = b->x_perf->max_workers;
        }
        if (b->x_perf->has_max_chunk) {
            o.perf.max_chunk = b->x_perf->max_chunk;
        }
    }
    if (!check_bitmap_args(b, bs, &o.sync_bitmap, errp)) {
        return NULL;
    }
    if (o.sync_bitmap) {
        o.bitmap_mode = b->bitmap_mode == BITMAP_SYNC_MODE_ALWAYS
                            ? BACKUP_BITMAP_ALWAYS
                        : b->bitmap_mode == BITMAP_SYNC_MODE_NEVER
                            ? BACKUP_BITMAP_NEVER
                            : BACKUP_BITMAP_ON_SUCCESS;
    }
    switch (b->sync) {
    case MIRROR_SYNC_MODE_BITMAP:
        o.sync = BACKUP_SYNC_BITMAP;
        break;
    case MIRROR_SYNC_MODE_TOP:
        o.sync = BACKUP_SYNC_TOP;
        break;
    case MIRROR_SYNC_MODE_NONE:
        o.sync = BACKUP_SYNC_NONE;
        break;
    default:
        o.sync = BACKUP_SYNC_FULL;
        break;
    }
    if (b->has_auto_finalize && !b->auto_finalize) {
        o.creation_flags |= JOB_MANUAL_FINALIZE;
    }
    if (b->has_auto_dismiss && !b->auto_dismiss) {
        o.creation_flags |= JOB_MANUAL_DISMISS;
    }
    return backup_job_create(b->job_id, bs, target, &o, txn, errp);
}

/* Drain the source for the action's life (QEMU: paired with clean). */
static void backup_action_hold(BackupAction *st, BlockNode *bs)
{
    node_ref(bs);
    st->bs = bs;
    node_drain_begin(bs);
}

static void backup_action_got_job(BackupAction *st, BlockJob *job)
{
    st->job = job;
    if (job) {
        job_ref(&job->job);
        job_pause(&job->job);
        st->job_paused = true;
    }
}

/* ---- blockdev-backup ---- */

static bool blockdev_backup_prepare(TxnState *s, GError **errp)
{
    BackupAction *st = s->opaque;
    BlockdevBackup *b = s->action->u.blockdev_backup.data;
    BlockNode *bs, *target;

    bs = txn_lookup_node(b->device, b->device, errp);
    if (!bs) {
        return false;
    }
    target = txn_lookup_node(b->target, b->target, errp);
    if (!target) {
        return false;
    }
    /*
     * Moving the target drains, which runs the loop: another client's
     * blockdev-del of either node may come there.  Held until the job
     * (or the action) holds them.
     */
    node_ref(bs);
    node_ref(target);
    if (node_set_loop(target, node_loop(bs), errp)) {
        backup_action_hold(st, bs);
        backup_action_got_job(st, do_backup_common((BackupCommon *)b, bs,
                                                   target, s->job_txn,
                                                   errp));
    }
    node_unref(target);
    node_unref(bs);
    return st->job != NULL;
}

/* ---- drive-backup ---- */

/* QEMU's bdrv_img_create() refuses a backing file for such a format. */
static bool format_takes_backing(const char *format, GError **errp)
{
    const BlockDriver *drv = driver_find(format);
    const char *const *opt = drv ? driver_create_opts(drv) : NULL;

    for (; opt && *opt; opt++) {
        if (!strcmp(*opt, "backing_file")) {
            return true;
        }
    }
    error_setg(errp, "Backing file not supported for file format '%s'",
               format);
    return false;
}

/* QEMU's bdrv_img_create() as drive-backup calls it. */
static bool create_target(const char *filename, const char *format,
                          BlockNode *backing, int64_t size, GError **errp)
{
    json_t *options;

    if (!driver_find(format)) {
        error_setg(errp, "Unknown file format '%s'", format);
        return false;
    }
    if (backing && !format_takes_backing(format, errp)) {
        return false;
    }
    options = json_object();
    json_object_set_new(options, "size", json_integer(size));
    if (backing) {
        json_object_set_new(options, "backing_file",
                            json_string(node_get_filename(backing)));
        json_object_set_new(options, "backing_fmt",
                            json_string(node_get_format_name(backing)));
    }
    img_print_formatting(filename, format, (uint64_t)size,
                         backing ? node_get_filename(backing) : NULL,
                         backing ? node_get_format_name(backing) : NULL);
    return image_create(format, filename, options, errp);
}

static bool drive_backup_prepare(TxnState *s, GError **errp)
{
    BackupAction *st = s->opaque;
    DriveBackup *b = s->action->u.drive_backup.data;
    NewImageMode mode = b->has_mode ? b->mode : NEW_IMAGE_MODE_ABSOLUTE_PATHS;
    BlockNode *bs, *source = NULL, *target;
    const char *format;
    bool set_backing = false;
    json_t *options;
    int64_t size;
    int flags;

    bs = txn_lookup_node(b->device, b->device, errp);
    if (!bs) {
        return false;
    }
    if (!node_is_inserted(bs)) {
        error_setg(errp, "Device has no medium");
        return false;
    }
    backup_action_hold(st, bs);

    format = b->format;
    if (!format && mode != NEW_IMAGE_MODE_EXISTING) {
        format = node_get_format_name(bs);
    }
    /* Before the target is created or opened: a busy source leaves no
     * new image behind (QEMU's "early check"). */
    if (!node_op_check(bs, BLOCK_OP_BACKUP_SOURCE, errp)) {
        return false;
    }
    /* The source's access and cache mode (QEMU passes all its open
     * flags; strata's others are internal to the node's own opening). */
    flags = (node_get_flags(bs) & (NODE_O_NOCACHE | NODE_O_NO_FLUSH)) |
            NODE_O_RDWR;

    /*
     * sync=top: the target gets the source's backing file, found past
     * any filters (backup does not replace the source, so none goes).
     * Without one it is a full backup.
     */
    if (b->sync == MIRROR_SYNC_MODE_TOP) {
        BlockChild *cow = node_backing_child(node_skip_filters(bs));
        source = cow ? child_node(cow) : NULL;
        if (!source) {
            b->sync = MIRROR_SYNC_MODE_FULL;
        }
    }
    if (b->sync == MIRROR_SYNC_MODE_NONE) {
        source = bs;
        flags |= NODE_O_NO_BACKING;
        set_backing = true;
    }

    size = node_getlength(bs);
    if (size < 0) {
        error_setg(errp, "bdrv_getlength failed: %s", g_strerror((int)-size));
        return false;
    }
    if (mode != NEW_IMAGE_MODE_EXISTING &&
        !create_target(b->target, format, source, size, errp)) {
        drop_hint(errp);
        return false;
    }

    options = json_object();
    json_object_set_new(options, "discard", json_string("unmap"));
    json_object_set_new(options, "detect-zeroes", json_string("unmap"));
    if (format) {
        json_object_set_new(options, "driver", json_string(format));
    }
    target = node_open(b->target, options, flags, errp);
    if (!target) {
        drop_hint(errp);
        return false;
    }
    if (!node_set_loop(target, node_loop(bs), errp)) {
        node_unref(target);
        return false;
    }
    /* QEMU's bdrv_set_backing_hd() on a driver without backing files
     * (raw, with mode existing). */
    if (set_backing &&
        !driver_has(node_get_driver(target), DRIVER_HAS_BACKING)) {
        error_setg(errp, "Driver '%s' of node '%s' does not support backing "
                   "files", node_get_format_name(target),
                   node_get_name(target));
        node_unref(target);
        return false;
    }
    if (set_backing &&
        !node_attach_child(target, source, "backing", CHILD_ROLE_COW,
                           errp)) {
        node_unref(target);
        return false;
    }
    if (set_backing) {
        node_refresh_filename(target);
    }
    backup_action_got_job(st, do_backup_common((BackupCommon *)b, bs, target,
                                               s->job_txn, errp));
    /* The job holds the target now, or nobody does. */
    node_unref(target);
    return st->job != NULL;
}

/* ---- Both ---- */

/* Not cancelled by another client while the transaction ran. */
static bool backup_action_job_alive(BackupAction *st)
{
    return st->job && st->job->job.status == JOB_STATUS_CREATED;
}

static void backup_action_commit(TxnState *s)
{
    BackupAction *st = s->opaque;

    if (!backup_action_job_alive(st)) {
        return;
    }
    job_start(&st->job->job);
    if (in_coroutine()) {
        /* As QEMU's, the job runs to its first pause point now, where
         * the drain holds it (job_start() only scheduled it). */
        co_wake(co_self());
        co_yield();
    }
}

static void backup_action_abort(TxnState *s)
{
    BackupAction *st = s->opaque;

    if (backup_action_job_alive(st)) {
        if (st->job_paused) {
            job_resume(&st->job->job);
            st->job_paused = false;
        }
        job_cancel_sync(&st->job->job, true);
    }
}

static void backup_action_clean(TxnState *s)
{
    BackupAction *st = s->opaque;

    if (!st->bs) {
        return;
    }
    node_drain_end(st->bs);
    if (st->job_paused) {
        job_resume(&st->job->job);
        if (in_coroutine()) {
            /* QEMU's drained_end enters the job at once: it runs up to
             * its first wait before the next action is cleaned. */
            co_wake(co_self());
            co_yield();
        }
    }
    if (st->job) {
        job_unref(&st->job->job);
        st->job = NULL;
    }
    node_unref(st->bs);
}

const TxnActionOps txn_blockdev_backup = {
    .state_size = sizeof(BackupAction),
    .prepare = blockdev_backup_prepare,
    .commit = backup_action_commit,
    .abort = backup_action_abort,
    .clean = backup_action_clean,
};

const TxnActionOps txn_drive_backup = {
    .state_size = sizeof(BackupAction),
    .prepare = drive_backup_prepare,
    .commit = backup_action_commit,
    .abort = backup_action_abort,
    .clean = backup_action_clean,
};

void qmp_blockdev_backup(BlockdevBackup *arg, GError **errp)
{
    TransactionAction action = {
        .type = TRANSACTION_ACTION_KIND_BLOCKDEV_BACKUP,
        .u.blockdev_backup.data = arg,
    };

    if (txn_run_one(&action, errp) && arg->job_id) {
        qmp_job_settle(arg->job_id);
    }
}

void qmp_drive_backup(DriveBackup *arg, GError **errp)
{
    TransactionAction action = {
        .type = TRANSACTION_ACTION_KIND_DRIVE_BACKUP,
        .u.drive_backup.data = arg,
    };

    if (txn_run_one(&action, errp) && arg->job_id) {
        qmp_job_settle(arg->job_id);
    }
}
