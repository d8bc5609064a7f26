/*
 * drive-mirror and blockdev-mirror: QEMU 7.2's checks, in its order and
 * words, then mirror_start() (strata/mirror.h).  A command that fails
 * leaves the graph as it was (drive-mirror may have created the target
 * image file by then, as QEMU's does).
 */
#include <errno.h>
#include <string.h>

#include "job-settle.h"
#include "transaction.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/op-blockers.h"
#include "../tools/common/create-opts.h"
#include "strata/mirror.h"
#include "qapi-commands.h"

/*
 * The library appends hints for people on lines of their own; QEMU's QMP
 * errors never carry them (as cmd-block.c's blockdev-add).
 */
static void drop_hints(GError **errp)
{
    if (errp && *errp) {
        char *nl = strchr((*errp)->message, '\n');
        if (nl) {
            *nl = '\0';
        }
    }
}

static MirrorSync sync_mode(MirrorSyncMode m)
{
    switch (m) {
    case MIRROR_SYNC_MODE_TOP:
        return MIRROR_SYNC_TOP;
    case MIRROR_SYNC_MODE_NONE:
        return MIRROR_SYNC_NONE;
    default:
        return MIRROR_SYNC_FULL;
    }
}

/* What both commands share (QEMU's blockdev_mirror_common). */
typedef struct MirrorArgs {
    const char *job_id;
    BlockNode *bs, *target;
    const char *replaces;
    MirrorSyncMode sync;
    MirrorBackingMode backing_mode;
    bool zero_target;
    bool has_speed;
    int64_t speed;
    bool has_granularity;
    uint32_t granularity;
    bool has_buf_size;
    int64_t buf_size;
    bool has_on_source_error;
    BlockdevOnError on_source_error;
    bool has_on_target_error;
    BlockdevOnError on_target_error;
    bool has_unmap, unmap;
    const char *filter_node_name;
    bool has_copy_mode;
    MirrorCopyMode copy_mode;
    bool has_auto_finalize, auto_finalize;
    bool has_auto_dismiss, auto_dismiss;
    bool merge_bitmaps;          /* x-strata-merge-bitmaps */
} MirrorArgs;

static void mirror_common(MirrorArgs *a, GError **errp)
{
    MirrorOptions o = {
        .job_id = a->job_id,
        .source = a->bs,
        .target = a->target,
        .speed = a->has_speed ? a->speed : 0,
        .granularity = a->has_granularity ? a->granularity : 0,
        .buf_size = a->has_buf_size ? a->buf_size : 0,
        .backing_mode = a->backing_mode,
        .zero_target = a->zero_target,
        .on_source_error = a->has_on_source_error ? a->on_source_error
                                                  : BLOCKDEV_ON_ERROR_REPORT,
        .on_target_error = a->has_on_target_error ? a->on_target_error
                                                  : BLOCKDEV_ON_ERROR_REPORT,
        .unmap = a->has_unmap ? a->unmap : true,
        .filter_node_name = a->filter_node_name,
        .copy_mode = a->has_copy_mode &&
                     a->copy_mode == MIRROR_COPY_MODE_WRITE_BLOCKING
                     ? MIRROR_COPY_WRITE_BLOCKING : MIRROR_COPY_BACKGROUND,
        .merge_bitmaps = a->merge_bitmaps,
    };
    if (a->has_auto_finalize && !a->auto_finalize) {
        o.creation_flags |= JOB_MANUAL_FINALIZE;
    }
    if (a->has_auto_dismiss && !a->auto_dismiss) {
        o.creation_flags |= JOB_MANUAL_DISMISS;
    }
    if (o.granularity != 0 &&
        (o.granularity < 512 || o.granularity > 1048576 * 64)) {
        error_setg(errp, "Parameter 'granularity' expects a value in range "
                   "[512B, 64MB]");
        return;
    }
    if (o.granularity & (o.granularity - 1)) {
        error_setg(errp, "Parameter 'granularity' expects a power of 2");
        return;
    }
    if (!node_op_check(a->bs, BLOCK_OP_MIRROR_SOURCE, errp) ||
        !node_op_check(a->target, BLOCK_OP_MIRROR_TARGET, errp)) {
        return;
    }
    MirrorSyncMode sync = a->sync;
    if (sync == MIRROR_SYNC_MODE_INCREMENTAL ||
        sync == MIRROR_SYNC_MODE_BITMAP) {
        /* mirror_start's check, which QEMU makes after these. */
    } else if (sync == MIRROR_SYNC_MODE_TOP &&
               !node_backing(node_skip_filters(a->bs))) {
        sync = MIRROR_SYNC_MODE_FULL;
    }

    const char *replaces = a->replaces;
    if (replaces) {
        int64_t bs_size = node_getlength(a->bs);
        if (bs_size < 0) {
            error_setg_errno(errp, (int)-bs_size,
                             "Failed to query device's size");
            return;
        }
        BlockNode *to_replace = node_find(replaces);
        if (!to_replace) {
            error_setg(errp, "Failed to find node with node-name='%s'",
                       replaces);
            return;
        }
        if (!node_op_check(to_replace, BLOCK_OP_MIRROR_REPLACE, errp)) {
            return;
        }
        /* Only the top-most non-filter, or what a driver vouches for. */
        if (!node_recurse_can_replace(a->bs, to_replace)) {
            error_setg(errp, "Cannot replace '%s' by a node mirrored from "
                       "'%s', because it cannot be guaranteed that doing so "
                       "would not lead to an abrupt change of visible data",
                       replaces, node_get_name(a->bs));
            return;
        }
        int64_t replace_size = node_getlength(to_replace);
        if (replace_size < 0) {
            error_setg_errno(errp, (int)-replace_size,
                             "Failed to query the replacement node's size");
            return;
        }
        if (bs_size != replace_size) {
            error_setg(errp, "cannot replace image with a mirror image of "
                       "different size");
            return;
        }
        o.replaces = replaces;
    }
    if (sync == MIRROR_SYNC_MODE_INCREMENTAL ||
        sync == MIRROR_SYNC_MODE_BITMAP) {
        error_setg(errp, "Sync mode '%s' not supported",
                   sync == MIRROR_SYNC_MODE_BITMAP ? "bitmap" : "incremental");
        return;
    }
    o.sync = sync_mode(sync);
    BlockJob *job = mirror_start(&o, errp);
    drop_hints(errp);
    if (job) {
        /* As QEMU's: the job runs until it first waits before the reply. */
        char *id = g_strdup(job->job.id);
        qmp_job_settle(id);
        g_free(id);
    }
}

void qmp_blockdev_mirror(const char *job_id, const char *device,
                         const char *target, const char *replaces,
                         MirrorSyncMode sync, bool has_speed, int64_t speed,
                         bool has_granularity, uint32_t granularity,
                         bool has_buf_size, int64_t buf_size,
                         bool has_on_source_error,
                         BlockdevOnError on_source_error,
                         bool has_on_target_error,
                         BlockdevOnError on_target_error,
                         const char *filter_node_name, bool has_copy_mode,
                         MirrorCopyMode copy_mode, bool has_auto_finalize,
                         bool auto_finalize, bool has_auto_dismiss,
                         bool auto_dismiss, bool has_x_strata_merge_bitmaps,
                         bool x_strata_merge_bitmaps, GError **errp)
{
    BlockNode *bs = txn_root_node(device, errp);
    if (!bs) {
        return;
    }
    BlockNode *target_bs = txn_lookup_node(target, target, errp);
    if (!target_bs) {
        return;
    }
    if (!node_set_loop(target_bs, node_loop(bs), errp)) {
        return;
    }
    MirrorArgs a = {
        .job_id = job_id, .bs = bs, .target = target_bs,
        .replaces = replaces, .sync = sync,
        .backing_mode = MIRROR_LEAVE_BACKING_CHAIN,
        .zero_target = sync == MIRROR_SYNC_MODE_FULL,
        .has_speed = has_speed, .speed = speed,
        .has_granularity = has_granularity, .granularity = granularity,
        .has_buf_size = has_buf_size, .buf_size = buf_size,
        .has_on_source_error = has_on_source_error,
        .on_source_error = on_source_error,
        .has_on_target_error = has_on_target_error,
        .on_target_error = on_target_error,
        .has_unmap = true, .unmap = true,
        .filter_node_name = filter_node_name,
        .has_copy_mode = has_copy_mode, .copy_mode = copy_mode,
        .has_auto_finalize = has_auto_finalize,
        .auto_finalize = auto_finalize,
        .has_auto_dismiss = has_auto_dismiss, .auto_dismiss = auto_dismiss,
        .merge_bitmaps = has_x_strata_merge_bitmaps && x_strata_merge_bitmaps,
    };
    mirror_common(&a, errp);
}

/* drive-mirror's new image: QEMU's bdrv_img_create() with its size. */
static bool create_target(const DriveMirror *arg, const char *format,
                          int64_t size, BlockNode *backing, GError **errp)
{
    json_t *options = json_object();

    json_object_set_new(options, "size", json_integer(size));
    if (backing) {
        json_object_set_new(options, "backing_file",
                            json_string(node_get_filename(backing)));
        json_object_set_new(options, "backing_fmt",
                            json_string(node_get_format_name(backing)));
    }
    img_print_formatting(arg->target, format, (uint64_t)size,
                         backing ? node_get_filename(backing) : NULL,
                         backing ? node_get_format_name(backing) : NULL);
    return image_create(format, arg->target, options, errp);
}

void qmp_drive_mirror(DriveMirror *arg, GError **errp)
{
    BlockNode *bs = txn_root_node(arg->device, errp);
    if (!bs) {
        return;
    }
    if (!node_op_check(bs, BLOCK_OP_MIRROR_SOURCE, errp)) {
        return;
    }
    NewImageMode mode = arg->has_mode ? arg->mode
                                      : NEW_IMAGE_MODE_ABSOLUTE_PATHS;
    const char *format = arg->format;
    if (!format && mode != NEW_IMAGE_MODE_EXISTING) {
        format = node_get_format_name(bs);
    }
    BlockNode *target_backing = node_backing(node_skip_filters(bs));
    MirrorSyncMode sync = arg->sync;
    if (!target_backing && sync == MIRROR_SYNC_MODE_TOP) {
        sync = MIRROR_SYNC_MODE_FULL;
    }
    if (sync == MIRROR_SYNC_MODE_NONE) {
        target_backing = bs;
    }
    int64_t size = node_getlength(bs);
    if (size < 0) {
        error_setg_errno(errp, (int)-size, "bdrv_getlength failed");
        return;
    }
    if (arg->replaces && !arg->node_name) {
        error_setg(errp, "a node-name must be provided when replacing a "
                   "named node of the graph");
        return;
    }
    if (mode != NEW_IMAGE_MODE_EXISTING) {
        bool full = sync == MIRROR_SYNC_MODE_FULL || !target_backing;
        if (!create_target(arg, format, size, full ? NULL : target_backing,
                           errp)) {
            return;
        }
    }

    json_t *options = json_object();
    if (arg->node_name) {
        json_object_set_new(options, "node-name",
                            json_string(arg->node_name));
    }
    if (format) {
        json_object_set_new(options, "driver", json_string(format));
    }
    /* QEMU opens the target with the source's flags, BDRV_O_UNMAP too. */
    if (node_discards_unmap(bs)) {
        json_object_set_new(options, "discard", json_string("unmap"));
    }
    /* The job gives the target its backing chain, not the image header. */
    int flags = (node_get_flags(bs) | NODE_O_RDWR | NODE_O_NO_BACKING) &
                (NODE_O_RDWR | NODE_O_NOCACHE | NODE_O_NO_FLUSH |
                 NODE_O_NO_BACKING);
    BlockNode *target_bs = node_open(arg->target, options, flags, errp);
    if (!target_bs) {
        drop_hints(errp);
        return;
    }
    if (!node_set_loop(target_bs, node_loop(bs), errp)) {
        node_unref(target_bs);
        return;
    }
    MirrorArgs a = {
        .job_id = arg->job_id, .bs = bs, .target = target_bs,
        .replaces = arg->replaces, .sync = sync,
        .backing_mode = mode == NEW_IMAGE_MODE_ABSOLUTE_PATHS
                        ? MIRROR_SOURCE_BACKING_CHAIN
                        : MIRROR_OPEN_BACKING_CHAIN,
        /* A new image reads zeroes; an existing one must be zeroed. */
        .zero_target = sync == MIRROR_SYNC_MODE_FULL &&
                       mode == NEW_IMAGE_MODE_EXISTING,
        .has_speed = arg->has_speed, .speed = arg->speed,
        .has_granularity = arg->has_granularity,
        .granularity = arg->granularity,
        .has_buf_size = arg->has_buf_size, .buf_size = arg->buf_size,
        .has_on_source_error = arg->has_on_source_error,
        .on_source_error = arg->on_source_error,
        .has_on_target_error = arg->has_on_target_error,
        .on_target_error = arg->on_target_error,
        .has_unmap = arg->has_unmap, .unmap = arg->unmap,
        .has_copy_mode = arg->has_copy_mode, .copy_mode = arg->copy_mode,
        .has_auto_finalize = arg->has_auto_finalize,
        .auto_finalize = arg->auto_finalize,
        .has_auto_dismiss = arg->has_auto_dismiss,
        .auto_dismiss = arg->auto_dismiss,
        .merge_bitmaps = arg->has_x_strata_merge_bitmaps &&
                         arg->x_strata_merge_bitmaps,
    };
    mirror_common(&a, errp);
    /* The job holds its own reference when it started. */
    node_unref(target_bs);
}
