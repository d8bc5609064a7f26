/*
 * throttle: a filter whose requests obey the limits of a throttle group
 * (object-add qom-type=throttle-group), shared with the group's other
 * throttle nodes.  QEMU's "throttle" driver: options `file` and
 * `throttle-group`, reads and writes counted in their directions, zero
 * writes and discards as writes; flushes are not throttled.  While the
 * node is drained, queued requests go through without waiting, so that a
 * drain never waits for a limit.
 */
#include <errno.h>
#include <string.h>

#include "strata/block-driver.h"
#include "strata/throttle.h"

typedef struct {
    ThrottleGroupMember tgm;
    char *group;
} ThrottleNodeState;

/* The group named in options (taken from them); QEMU's messages. */
static char *take_group(json_t *options, bool required, GError **errp)
{
    char *group = NULL;

    if (!opts_take_str(options, "throttle-group", &group, errp)) {
        return NULL;
    }
    if (!group) {
        if (required) {
            error_setg(errp, "Please specify a throttle group");
        }
        return NULL;
    }
    if (!throttle_group_find(group)) {
        error_setg(errp, "Throttle group '%s' does not exist", group);
        g_free(group);
        return NULL;
    }
    return group;
}

static int throttle_open(BlockNode *bs, json_t *options, int flags,
                         GError **errp)
{
    ThrottleNodeState *s = bs->opaque;
    (void)flags;

    bs->file = node_open_child(bs, options, "file",
                               CHILD_ROLE_FILTERED | CHILD_ROLE_PRIMARY,
                               false, errp);
    if (!bs->file) {
        return -EINVAL;
    }
    BlockNode *file = bs->file->bs;
    bs->supported_write_flags = REQ_WRITE_UNCHANGED |
        file->supported_write_flags | file->drv->supported_write_flags;
    bs->supported_zero_flags = REQ_WRITE_UNCHANGED |
        file->supported_zero_flags | file->drv->supported_zero_flags;

    s->group = take_group(options, true, errp);
    if (!s->group) {
        return -EINVAL;
    }
    throttle_group_register(&s->tgm, s->group, node_loop(bs));
    return 0;
}

static void throttle_close(BlockNode *bs)
{
    ThrottleNodeState *s = bs->opaque;
    throttle_group_unregister(&s->tgm);
    g_free(s->group);
    s->group = NULL;
}

static int64_t throttle_getlength(BlockNode *bs)
{
    return node_getlength(bs->file->bs);
}

static int coroutine_fn throttle_co_preadv(BlockNode *bs, int64_t offset,
                                           int64_t bytes, IOVec *qiov,
                                           size_t qiov_offset, int flags)
{
    ThrottleNodeState *s = bs->opaque;
    throttle_group_co_intercept(&s->tgm, bytes, false);
    return child_co_preadv(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn throttle_co_pwritev(BlockNode *bs, int64_t offset,
                                            int64_t bytes, IOVec *qiov,
                                            size_t qiov_offset, int flags)
{
    ThrottleNodeState *s = bs->opaque;
    throttle_group_co_intercept(&s->tgm, bytes, true);
    return child_co_pwritev(bs->file, offset, bytes, qiov, qiov_offset,
                            flags);
}

static int coroutine_fn throttle_co_pwritev_compressed(BlockNode *bs,
                                                       int64_t offset,
                                                       int64_t bytes,
                                                       IOVec *qiov,
                                                       size_t qiov_offset)
{
    return throttle_co_pwritev(bs, offset, bytes, qiov, qiov_offset,
                               REQ_WRITE_COMPRESSED);
}

static int coroutine_fn throttle_co_pwrite_zeroes(BlockNode *bs,
                                                  int64_t offset,
                                                  int64_t bytes, int flags)
{
    ThrottleNodeState *s = bs->opaque;
    throttle_group_co_intercept(&s->tgm, bytes, true);
    return child_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn throttle_co_pdiscard(BlockNode *bs, int64_t offset,
                                             int64_t bytes)
{
    ThrottleNodeState *s = bs->opaque;
    throttle_group_co_intercept(&s->tgm, bytes, true);
    return child_co_pdiscard(bs->file, offset, bytes);
}

/* Not throttled; QEMU's core passes a filter's truncate on the same way. */
static int coroutine_fn throttle_co_truncate(BlockNode *bs, int64_t offset,
                                             bool exact, PreallocMode prealloc,
                                             GError **errp)
{
    return child_co_truncate(bs->file, offset, exact, prealloc, errp);
}

static int throttle_reopen_prepare(ReopenState *rs, GError **errp)
{
    ThrottleNodeState *s = rs->bs->opaque;
    GError *err = NULL;
    char *group = take_group(rs->options, !rs->keep_old, &err);

    if (err) {
        g_propagate_error(errp, err);
        return -EINVAL;
    }
    rs->opaque = group ? group : g_strdup(s->group);
    return 0;
}

static void throttle_reopen_commit(ReopenState *rs)
{
    ThrottleNodeState *s = rs->bs->opaque;
    char *group = rs->opaque;

    rs->opaque = NULL;
    if (!strcmp(group, s->group)) {
        g_free(group);
        return;
    }
    throttle_group_unregister(&s->tgm);
    g_free(s->group);
    s->group = group;
    throttle_group_register(&s->tgm, s->group, node_loop(rs->bs));
}

static void throttle_reopen_abort(ReopenState *rs)
{
    g_free(rs->opaque);
    rs->opaque = NULL;
}

static void throttle_drained_begin(BlockNode *bs)
{
    ThrottleNodeState *s = bs->opaque;
    throttle_group_drained_begin(&s->tgm);
}

static void throttle_drained_end(BlockNode *bs)
{
    ThrottleNodeState *s = bs->opaque;
    throttle_group_drained_end(&s->tgm);
}

static void throttle_set_loop(BlockNode *bs)
{
    ThrottleNodeState *s = bs->opaque;
    throttle_group_set_loop(&s->tgm, node_loop(bs));
}

const BlockDriver bdrv_throttle = {
    .format_name = "throttle",
    .instance_size = sizeof(ThrottleNodeState),
    .is_filter = true,
    .open = throttle_open,
    .close = throttle_close,
    .child_perm = node_default_perms,
    .getlength = throttle_getlength,
    .co_preadv = throttle_co_preadv,
    .co_pwritev = throttle_co_pwritev,
    .co_pwritev_compressed = throttle_co_pwritev_compressed,
    .co_pwrite_zeroes = throttle_co_pwrite_zeroes,
    .co_pdiscard = throttle_co_pdiscard,
    .co_truncate = throttle_co_truncate,
    .reopen_prepare = throttle_reopen_prepare,
    .reopen_commit = throttle_reopen_commit,
    .reopen_abort = throttle_reopen_abort,
    .drained_begin = throttle_drained_begin,
    .drained_end = throttle_drained_end,
    .set_loop = throttle_set_loop,
};
