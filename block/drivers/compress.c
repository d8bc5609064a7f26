/*
 * compress: a filter that turns every write into a compressed write of its
 * child (QEMU's "compress" driver).  The child must be a format that can
 * store compressed clusters; the filter's alignment is the child's cluster
 * size, so the core pads partial writes with read-modify-write and the
 * child only ever sees whole clusters (or the image's last, short one).
 */
#include <errno.h>
#include "strata/block-driver.h"

static int compress_open(BlockNode *bs, json_t *options, int flags,
                         GError **errp)
{
    if (!node_open_child(bs, options, "file",
                         CHILD_ROLE_FILTERED | CHILD_ROLE_PRIMARY, false,
                         errp)) {
        return -EINVAL;
    }
    BlockNode *file = bs->file->bs;
    if (!file->drv || !file->drv->co_pwritev_compressed) {
        error_setg(errp,
                   "Compression is not supported for underlying format: %s",
                   file->drv ? file->drv->format_name : "(no format)");
        return -ENOTSUP;
    }
    bs->supported_write_flags =
        REQ_WRITE_UNCHANGED |
        (REQ_FUA & (file->supported_write_flags |
                    file->drv->supported_write_flags));
    bs->supported_zero_flags =
        REQ_WRITE_UNCHANGED |
        ((REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK) &
         (file->supported_zero_flags | file->drv->supported_zero_flags));
    return 0;
}

static void compress_refresh_limits(BlockNode *bs)
{
    BlockDriverInfo bdi;
    if (node_get_info(bs->file->bs, &bdi) < 0 || bdi.cluster_size <= 0) {
        return;
    }
    bs->bl.request_alignment = (uint32_t)bdi.cluster_size;
}

static int64_t compress_getlength(BlockNode *bs)
{
    return node_getlength(bs->file->bs);
}

static int coroutine_fn compress_co_preadv(BlockNode *bs, int64_t offset,
                                           int64_t bytes, IOVec *qiov,
                                           size_t qoff, int flags)
{
    return child_co_preadv(bs->file, offset, bytes, qiov, qoff, flags);
}

static int coroutine_fn compress_co_pwritev(BlockNode *bs, int64_t offset,
                                            int64_t bytes, IOVec *qiov,
                                            size_t qoff, int flags)
{
    return child_co_pwritev(bs->file, offset, bytes, qiov, qoff,
                            flags | REQ_WRITE_COMPRESSED);
}

static int coroutine_fn compress_co_pwrite_zeroes(BlockNode *bs,
                                                  int64_t offset,
                                                  int64_t bytes, int flags)
{
    return child_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn compress_co_pdiscard(BlockNode *bs, int64_t offset,
                                             int64_t bytes)
{
    return child_co_pdiscard(bs->file, offset, bytes);
}

const BlockDriver bdrv_compress = {
    .format_name = "compress",
    .is_filter = true,
    .open = compress_open,
    .refresh_limits = compress_refresh_limits,
    .child_perm = node_default_perms,
    .getlength = compress_getlength,
    .co_preadv = compress_co_preadv,
    .co_pwritev = compress_co_pwritev,
    .co_pwrite_zeroes = compress_co_pwrite_zeroes,
    .co_pdiscard = compress_co_pdiscard,
};
