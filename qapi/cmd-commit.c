/*
 * block-commit (QEMU 7.2's qmp_block_commit): finds device, top and base
 * with QEMU's checks, in QEMU's order (libvirt probes the command by its
 * DeviceNotFound error, so the device comes first), then starts an
 * intermediate commit (jobs/commit.c) or, when top is the active layer
 * or has a writer, an active commit (a mirror, strata/mirror.h).
 */
#include "strata/block-ops.h"
#include "strata/commit.h"
#include "strata/error.h"
#include "strata/op-blockers.h"
#include "strata/mirror.h"
#include "qapi-commands.h"
#include "job-settle.h"
#include "block-job-args.h"
#include "transaction.h"

/* The next image down a chain, past filters (bdrv_filter_or_cow_bs). */
static BlockNode *filter_or_cow(BlockNode *bs)
{
    BlockNode *f = node_filtered_child(bs);
    return f ? f : node_backing(bs);
}

static bool chain_contains(BlockNode *top, BlockNode *bs)
{
    for (BlockNode *it = top; it; it = filter_or_cow(it)) {
        if (it == bs) {
            return true;
        }
    }
    return false;
}

/* QEMU's bdrv_find_base: the bottom of bs's chain (bs if it has none). */
static BlockNode *find_base(BlockNode *bs)
{
    BlockNode *base = bs;
    while (filter_or_cow(base)) {
        base = filter_or_cow(base);
    }
    return base;
}

/* QEMU's bdrv_find_overlay: the node of bs's chain right above top. */
static BlockNode *find_overlay(BlockNode *bs, BlockNode *top)
{
    for (BlockNode *it = bs; it; it = filter_or_cow(it)) {
        if (filter_or_cow(it) == top) {
            return it;
        }
    }
    return NULL;
}

void qmp_block_commit(const char *job_id, const char *device,
                      const char *base_node, const char *base,
                      const char *top_node, const char *top,
                      const char *backing_file, bool has_speed,
                      int64_t speed, bool has_on_error,
                      BlockdevOnError on_error,
                      const char *filter_node_name, bool has_auto_finalize,
                      bool auto_finalize, bool has_auto_dismiss,
                      bool auto_dismiss, bool has_x_strata_skip_identical,
                      bool x_strata_skip_identical,
                      bool has_x_strata_discard_source,
                      bool x_strata_discard_source,
                      bool has_x_strata_merge_bitmaps,
                      bool x_strata_merge_bitmaps, GError **errp)
{
    int flags = bja_job_flags(has_auto_finalize, auto_finalize,
                              has_auto_dismiss, auto_dismiss);
    bool skip_identical = has_x_strata_skip_identical &&
                          x_strata_skip_identical;
    bool discard_source = has_x_strata_discard_source &&
                          x_strata_discard_source;
    bool merge_bitmaps = has_x_strata_merge_bitmaps && x_strata_merge_bitmaps;
    BlockNode *bs, *top_bs, *base_bs;
    BlockJob *job;

    speed = bja_speed(has_speed, speed);
    on_error = bja_on_error(has_on_error, on_error);

    if (!bja_lookup_device(device, errp)) {
        return;
    }
    bs = bja_root_node(device, errp);
    if (!bs || !node_op_check(bs, BLOCK_OP_COMMIT_SOURCE, errp)) {
        return;
    }

    top_bs = bs;
    if (top_node && top) {
        error_setg(errp, "'top-node' and 'top' are mutually exclusive");
        return;
    } else if (top_node) {
        top_bs = txn_lookup_node(NULL, top_node, errp);
        if (!top_bs) {
            return;
        }
        if (!chain_contains(bs, top_bs)) {
            error_setg(errp, "'%s' is not in this backing file chain",
                       top_node);
            return;
        }
    } else if (top && strcmp(node_get_filename(bs), top)) {
        top_bs = node_find_backing_image(bs, top);
    }
    if (!top_bs) {
        error_setg(errp, "Top image file %s not found", top ? top : "NULL");
        return;
    }

    if (base_node && base) {
        error_setg(errp, "'base-node' and 'base' are mutually exclusive");
        return;
    } else if (base_node) {
        base_bs = txn_lookup_node(NULL, base_node, errp);
        if (!base_bs) {
            return;
        }
        if (!chain_contains(top_bs, base_bs)) {
            error_setg(errp, "'%s' is not in this backing file chain",
                       base_node);
            return;
        }
    } else if (base) {
        base_bs = node_find_backing_image(top_bs, base);
        if (!base_bs) {
            error_setg(errp, "Can't find '%s' in the backing chain", base);
            return;
        }
    } else {
        base_bs = find_base(top_bs);
    }

    for (BlockNode *it = top_bs; it && it != filter_or_cow(base_bs);
         it = filter_or_cow(it)) {
        if (!node_op_check(it, BLOCK_OP_COMMIT_TARGET, errp)) {
            return;
        }
    }
    if (top_bs == base_bs) {
        error_setg(errp, "cannot commit an image into itself");
        return;
    }

    /* QEMU: active commit when top is the active layer or has a writer. */
    uint64_t top_perm, top_shared;
    node_get_cumulative_perm(top_bs, &top_perm, &top_shared);
    if ((top_perm & BLK_PERM_WRITE) ||
        node_skip_filters(top_bs) == node_skip_filters(bs)) {
        if (backing_file) {
            if (node_skip_filters(top_bs) == node_skip_filters(bs)) {
                error_setg(errp, "'backing-file' specified, but 'top' is the "
                           "active layer");
            } else {
                error_setg(errp, "'backing-file' specified, but 'top' has a "
                           "writer on it");
            }
            return;
        }
        if (!job_id) {
            /* The job is named after the device, even if top is not it. */
            job_id = node_device_name(bs);
        }
        CommitActiveOptions x = {
            .discard_source = discard_source,
            .skip_identical = skip_identical,
            .merge_bitmaps = merge_bitmaps,
        };
        job = commit_active_start(job_id, top_bs, base_bs, flags, speed,
                                  on_error, filter_node_name, &x, errp);
    } else {
        BlockNode *overlay = find_overlay(bs, top_bs);
        if (overlay && !node_op_check(overlay, BLOCK_OP_COMMIT_TARGET, errp)) {
            return;
        }
        CommitOptions o = {
            .job_id = job_id,
            .bs = bs,
            .top = top_bs,
            .base = base_bs,
            .creation_flags = flags,
            .speed = speed,
            .on_error = on_error,
            .backing_file = backing_file,
            .filter_node_name = filter_node_name,
            .skip_identical = skip_identical,
            .discard_source = discard_source,
            .merge_bitmaps = merge_bitmaps,
        };
        job = commit_start(&o, errp);
    }
    if (job) {
        qmp_job_settle(job->job.id);
    }
}
