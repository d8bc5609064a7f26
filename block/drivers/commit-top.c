/*
 * commit_top: the filter an intermediate commit job puts above the top
 * of the range it commits (QEMU's implicit "commit_top" node).
 *
 * Its parents (the overlay's backing link) keep reading the chain as
 * before, but the filter itself takes no permission on what lies below
 * and shares everything: so the job may block consistent reads of the
 * intermediate images (they change while base fills) without blocking
 * the overlay, and may write to base, which the overlay's backing link
 * would otherwise forbid.  Reads pass through; nothing writes through it.
 *
 * Only the commit job creates it (driver "commit_top", option "backing"
 * naming the top node); it is not in QMP's BlockdevDriver enum, so
 * blockdev-add cannot.
 */
#include <errno.h>

#include "strata/block-driver.h"

static int commit_top_open(BlockNode *bs, json_t *options, int flags,
                           GError **errp)
{
    (void)flags;
    /* node_open_child records a child named "backing" as bs->backing. */
    if (!node_open_child(bs, options, "backing",
                         CHILD_ROLE_FILTERED | CHILD_ROLE_PRIMARY, false,
                         errp)) {
        return -EINVAL;
    }
    bs->supported_write_flags = 0;
    bs->supported_zero_flags = 0;
    return 0;
}

static void commit_top_child_perm(BlockNode *bs, BlockChild *c,
                                  unsigned role, const ReopenState *rs,
                                  uint64_t perm, uint64_t shared,
                                  uint64_t *nperm, uint64_t *nshared)
{
    (void)bs; (void)c; (void)role; (void)rs; (void)perm; (void)shared;
    *nperm = 0;
    *nshared = BLK_PERM_ALL;
}

static int coroutine_fn commit_top_co_preadv(BlockNode *bs, int64_t offset,
                                             int64_t bytes, IOVec *qiov,
                                             size_t qiov_offset, int flags)
{
    return child_co_preadv(bs->backing, offset, bytes, qiov, qiov_offset,
                           flags);
}

static int64_t commit_top_getlength(BlockNode *bs)
{
    return node_getlength(bs->backing->bs);
}

/* QEMU shows the top image's name for the filter. */
static void commit_top_refresh_filename(BlockNode *bs)
{
    if (bs->backing) {
        g_strlcpy(bs->filename, node_get_filename(bs->backing->bs),
                  sizeof(bs->filename));
    }
}

const BlockDriver bdrv_commit_top = {
    .format_name = "commit_top",
    .is_filter = true,
    .never_freeze = true,
    .open = commit_top_open,
    .child_perm = commit_top_child_perm,
    .co_preadv = commit_top_co_preadv,
    .getlength = commit_top_getlength,
    .has_variable_length = true,
    .refresh_filename = commit_top_refresh_filename,
};
