/*
 * Copy offload through the graph (strata/copy-range.h): the checks,
 * in-flight counting and write accounting that io.c gives a read and a
 * write, around each step of QEMU's two-step scheme (the source side's
 * drivers pass the request down to a protocol driver, which turns it to
 * the target side; the target side's drivers pass it down to the
 * protocol driver that copies).
 *
 * Anything that io.c would do to a request and that a copy cannot do
 * (bounce an unaligned request, detect zeroes, emulate flags) answers
 * -ENOTSUP instead, so that the caller's read/write path does it.
 */
#include <errno.h>
#include "block-int.h"
#include "strata/copy-range.h"
#include "strata/dirty-bitmap.h"

static bool aligned(const BlockNode *bs, int64_t offset, int64_t bytes)
{
    uint32_t a = MAX(bs->bl.request_alignment, 1);
    return offset % a == 0 && bytes % a == 0;
}

int coroutine_fn child_co_copy_range_from(BlockChild *src, int64_t src_off,
                                          BlockChild *dst, int64_t dst_off,
                                          int64_t bytes, int read_flags,
                                          int write_flags)
{
    BlockNode *bs = src->bs;
    TrackedReq *req;
    int ret;

    if (src_off < 0 || dst_off < 0 || bytes < 0) {
        return -EIO;
    }
    if (bytes == 0) {
        return 0;
    }
    if (!bs->drv || !bs->drv->co_copy_range_from ||
        !aligned(bs, src_off, bytes)) {
        return -ENOTSUP;
    }
    req = node_co_req_begin(bs, src_off, bytes, 0);
    ret = bs->drv->co_copy_range_from(bs, src, src_off, dst, dst_off, bytes,
                                      read_flags, write_flags);
    node_co_req_end(bs, req, src_off, bytes, false, ret);
    return ret < 0 ? ret : 0;
}

int coroutine_fn child_co_copy_range_to(BlockChild *src, int64_t src_off,
                                        BlockChild *dst, int64_t dst_off,
                                        int64_t bytes, int read_flags,
                                        int write_flags)
{
    BlockNode *bs = dst->bs;
    TrackedReq *req;
    int ret;

    if (src_off < 0 || dst_off < 0 || bytes < 0) {
        return -EIO;
    }
    if (!(dst->perm & BLK_PERM_WRITE)) {
        return -EPERM;
    }
    if (bs->read_only) {
        return -EPERM;
    }
    if (bytes == 0) {
        return 0;
    }
    /* A bitmap that cannot record would miss the write (as io.c). */
    if (bs->dirty_bitmaps && node_has_readonly_bitmaps(bs)) {
        return -EPERM;
    }
    /*
     * Flags to emulate and zeroes to detect: the write path does that.
     * REQ_SERIALISING is the request's own, not the driver's: kept here.
     */
    if ((write_flags & ~REQ_SERIALISING) ||
        bs->detect_zeroes != DETECT_ZEROES_OFF ||
        !bs->drv || !bs->drv->co_copy_range_to ||
        !aligned(bs, dst_off, bytes)) {
        return -ENOTSUP;
    }
    req = node_co_req_begin(bs, dst_off, bytes,
                            write_flags & REQ_SERIALISING);
    ret = bs->drv->co_copy_range_to(bs, src, src_off, dst, dst_off, bytes,
                                    read_flags,
                                    write_flags & ~REQ_SERIALISING);
    node_co_req_end(bs, req, dst_off, bytes, true, ret);
    return ret < 0 ? ret : 0;
}

int coroutine_fn child_co_copy_range(BlockChild *src, int64_t src_off,
                                     BlockChild *dst, int64_t dst_off,
                                     int64_t bytes, int read_flags,
                                     int write_flags)
{
    return child_co_copy_range_from(src, src_off, dst, dst_off, bytes,
                                    read_flags, write_flags);
}
