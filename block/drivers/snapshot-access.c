/*
 * snapshot-access: a read-only view of the point-in-time snapshot its
 * file keeps (QEMU 7.2's driver of that name), for fleecing: file is a
 * copy-before-write filter, and this node reads, answers block status
 * and discards through the filter's snapshot API
 * (strata/copy-before-write.h).  An NBD export of this node is what a
 * backup tool pulls the frozen disk from while the guest keeps writing
 * through the filter.
 *
 * Writes are refused (-ENOTSUP), and the node takes no permission on
 * its file: the snapshot API is how it reads, and the filter decides
 * what may be read, as QEMU's does.  Discard is how the reader says it
 * is done with a range: the filter frees it in its target.
 */
#include <errno.h>

#include "strata/block-driver.h"
#include "strata/copy-before-write.h"

static int sa_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    (void)flags;
    bs->file = node_open_child(bs, options, "file",
                               CHILD_ROLE_DATA | CHILD_ROLE_PRIMARY, false,
                               errp);
    return bs->file ? 0 : -EINVAL;
}

static int coroutine_fn sa_co_preadv(BlockNode *bs, int64_t offset,
                                     int64_t bytes, IOVec *qiov,
                                     size_t qiov_offset, int flags)
{
    if (flags) {
        return -ENOTSUP;
    }
    return cbw_snapshot_preadv(bs->file->bs, offset, bytes, qiov,
                               qiov_offset);
}

static int coroutine_fn sa_co_pwritev(BlockNode *bs, int64_t offset,
                                      int64_t bytes, IOVec *qiov,
                                      size_t qiov_offset, int flags)
{
    (void)bs, (void)offset, (void)bytes, (void)qiov, (void)qiov_offset;
    (void)flags;
    return -ENOTSUP;
}

static int coroutine_fn sa_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                            int64_t bytes, int flags)
{
    (void)bs, (void)offset, (void)bytes, (void)flags;
    return -ENOTSUP;
}

static int coroutine_fn sa_co_pdiscard(BlockNode *bs, int64_t offset,
                                       int64_t bytes)
{
    return cbw_snapshot_pdiscard(bs->file->bs, offset, bytes);
}

static int coroutine_fn sa_co_block_status(BlockNode *bs, bool want_zero,
                                           int64_t offset, int64_t bytes,
                                           int64_t *pnum, int64_t *map,
                                           BlockNode **file)
{
    return cbw_snapshot_block_status(bs->file->bs, want_zero, offset, bytes,
                                     pnum, map, file);
}

static int64_t sa_getlength(BlockNode *bs)
{
    return node_getlength(bs->file->bs);
}

static void sa_refresh_filename(BlockNode *bs)
{
    g_strlcpy(bs->filename, node_get_filename(bs->file->bs),
              sizeof(bs->filename));
}

static void sa_child_perm(BlockNode *bs, BlockChild *c, unsigned role,
                          const ReopenState *rs, uint64_t perm,
                          uint64_t shared, uint64_t *nperm,
                          uint64_t *nshared)
{
    (void)bs, (void)c, (void)role, (void)rs, (void)perm, (void)shared;
    *nperm = 0;
    *nshared = BLK_PERM_ALL;
}

const BlockDriver bdrv_snapshot_access = {
    .format_name = "snapshot-access",
    .open = sa_open,
    .child_perm = sa_child_perm,
    .refresh_filename = sa_refresh_filename,
    .co_preadv = sa_co_preadv,
    .co_pwritev = sa_co_pwritev,
    .co_pwrite_zeroes = sa_co_pwrite_zeroes,
    .co_pdiscard = sa_co_pdiscard,
    .co_block_status = sa_co_block_status,
    .getlength = sa_getlength,
    .has_variable_length = true,
};
