/*
 * compress: a filter that stores everything written through it compressed.
 *
 * Writes go to the child with REQ_WRITE_COMPRESSED, so the child must be a
 * format that can store compressed clusters (qcow2).  Its request alignment
 * is the child's cluster size: the request path turns smaller or unaligned
 * writes into whole clusters (read, merge, write), since a compressed
 * cluster can only be written whole.  Everything else passes through.
 * QEMU's "compress" driver, with its checks and messages.
 */
#include <errno.h>

#include "strata/block-driver.h"

static int compress_open(BlockNode *bs, json_t *options, int flags,
                         GError **errp)
{
    (void)flags;
    bs->file = node_open_child(bs, options, "file",
                               CHILD_ROLE_FILTERED | CHILD_ROLE_PRIMARY,
                               false, errp);
    if (!bs->file) {
        return -EINVAL;
    }
    BlockNode *file = bs->file->bs;
    if (!file->drv->co_pwritev_compressed) {
        error_setg(errp, "Compression is not supported for underlying "
                   "format: %s", node_get_format_name(file));
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

    if (bs->file && node_get_info(bs->file->bs, &bdi) == 0 &&
        bdi.cluster_size > 0) {
        bs->bl.request_alignment = (uint32_t)bdi.cluster_size;
    }
}

static int64_t compress_getlength(BlockNode *bs)
{
    return node_getlength(bs->file->bs);
}

static int coroutine_fn compress_co_preadv(BlockNode *bs, int64_t offset,
                                           int64_t bytes, IOVec *qiov,
                                           size_t qiov_offset, int flags)
{
    return child_co_preadv(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn compress_co_pwritev(BlockNode *bs, int64_t offset,
                                            int64_t bytes, IOVec *qiov,
                                            size_t qiov_offset, int flags)
{
    return child_co_pwritev(bs->file, offset, bytes, qiov, qiov_offset,
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
    .co_preadv = compress_co_preadv,
    .co_pwritev = compress_co_pwritev,
    .co_pwrite_zeroes = compress_co_pwrite_zeroes,
    .co_pdiscard = compress_co_pdiscard,
    .getlength = compress_getlength,
    .has_variable_length = true,
};
