/*
 * The end of the mirror job and of active commit (mirror.c runs them):
 * with the source drained, the target gets the backing chain asked for
 * and takes the source's place (complete), or everything is put back
 * (cancel, failure); the mirror_top filter goes either way.
 */
#include <errno.h>

#include "strata/bitmap-pivot.h"
#include "strata/block-ops.h"
#include "strata/block.h"
#include "strata/error.h"
#include "strata/mirror-top.h"
#include "strata/op-blockers.h"
#include "mirror-int.h"

/* ---- The end: the switch, or putting everything back ---- */

/*
 * Give the target the backing chain drive-mirror asked for.  A failure is
 * reported and fails the job (QEMU's codes: -EPERM when the link cannot
 * be made, -EINVAL when the target's backing file cannot be opened), but
 * the switch still happens, as in QEMU: the target holds the data.
 */
static int mirror_attach_target_backing(MirrorJob *s)
{
    BlockNode *t = node_skip_filters(s->target);
    GError *err = NULL;
    int ret = 0;

    if (s->backing_mode == MIRROR_SOURCE_BACKING_CHAIN) {
        BlockNode *backing = s->sync == MIRROR_SYNC_NONE ? s->source : s->base;
        if (!backing || node_backing(t) == backing) {
            return 0;
        }
        if (!node_attach_child(t, backing, "backing", CHILD_ROLE_COW, &err)) {
            error_print("%s", err->message);
            g_clear_error(&err);
            ret = -EPERM;
        }
        node_refresh_filename(t);
    } else if (s->backing_mode == MIRROR_OPEN_BACKING_CHAIN) {
        if (node_backing(t)) {
            return 0;
        }
        char *path = node_get_full_backing_filename(t);
        if (!path) {
            return 0;
        }
        json_t *opts = json_object();
        const char *fmt = node_backing_format(t);
        if (fmt && fmt[0]) {
            json_object_set_new(opts, "driver", json_string(fmt));
        }
        BlockNode *b = node_open(path, opts, 0, &err);
        g_free(path);
        if (!b) {
            error_print("Could not open backing file: %s", err->message);
            g_clear_error(&err);
            return -EINVAL;
        }
        if (!node_attach_child(t, b, "backing", CHILD_ROLE_COW, &err)) {
            error_print("%s", err->message);
            g_clear_error(&err);
            ret = -EPERM;
        } else {
            node_backing_opened_from_header(t);
        }
        node_unref(b);
        node_refresh_filename(t);
    }
    return ret;
}

/* x-strata-merge-bitmaps: the nodes that left the disk's chain. */
static void mirror_merge_bitmaps(MirrorJob *s, BlockNode *src,
                                 BlockNode *to_replace)
{
    if (s->is_commit) {
        for (BlockNode *n = src; n && n != s->target;
             n = mirror_filter_or_cow(n)) {
            bitmaps_merge_into(s->target, n);
        }
        return;
    }
    bitmaps_merge_into(s->target, to_replace);
    if (src != to_replace) {
        bitmaps_merge_into(s->target, src);
    }
}

int mirror_exit_common(Job *job, bool abort)
{
    MirrorJob *s = mirror_job(job);
    int ret = 0;
    GError *err = NULL;

    if (s->prepared) {
        return 0;
    }
    s->prepared = true;

    BlockNode *src = s->source, *target = s->target, *filter = s->filter;
    node_ref(src);
    node_ref(target);
    node_ref(filter);

    if (s->frozen) {
        chain_unfreeze(filter, target, "mirror");
        s->frozen = false;
    }
    block_copy_free(s->bcs);
    s->bcs = NULL;
    dirty_bitmap_release(s->bitmap);
    s->bitmap = NULL;

    /* The job stops being a user of its nodes before the graph changes. */
    blk_unref(s->target_blk);
    s->target_blk = NULL;
    s->target_edge = NULL;
    job_remove_all_nodes(job);
    mirror_restore_read_only(s);

    if (!s->in_drain) {
        node_drain_begin(src);
        s->in_drain = true;
    }
    node_drain_begin(target);

    if (!abort) {
        ret = mirror_attach_target_backing(s);
    }
    if (s->should_complete && !abort) {
        BlockNode *to_replace = s->to_replace ? s->to_replace : src;
        bool ro = node_is_read_only(to_replace);
        if (ro != node_is_read_only(target)) {
            node_reopen(target, NULL, ro, NULL);
        }
        node_drain_begin(to_replace);
        /* The graph may have changed since the job started. */
        if (!node_recurse_can_replace(src, to_replace)) {
            error_setg(&err, "Can no longer replace '%s' by '%s', because "
                       "it can no longer be guaranteed that doing so would "
                       "not lead to an abrupt change of visible data",
                       node_get_name(to_replace), node_get_name(target));
        }
        if (err || !node_replace(to_replace, target, &err)) {
            error_print("%s", err->message);
            g_clear_error(&err);
            ret = -EPERM;
        } else if (s->merge_bitmaps) {
            /* Still drained: no write between the pivot and this. */
            mirror_merge_bitmaps(s, src, to_replace);
        }
        node_drain_end(to_replace);
    }
    mirror_top_remove(filter);

    node_drain_end(target);
    node_drain_end(src);
    s->in_drain = false;

    /*
     * The job may outlive its dismissal for a moment (references of the
     * job layer): the nodes must not, or a deleted node would linger.
     */
    node_unref(s->filter);
    s->filter = NULL;
    node_unref(s->source);
    s->source = NULL;
    node_unref(s->target);
    s->target = NULL;
    if (s->to_replace) {
        node_op_unblock_all(s->to_replace, s);
        node_unref(s->to_replace);
        s->to_replace = NULL;
    }
    node_unref(filter);
    node_unref(target);
    node_unref(src);
    return ret;
}
