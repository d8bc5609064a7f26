/*
 * The VM state area of a node: where savevm puts the machine's RAM and
 * device state beside the disk (qemu-io read/write -b; the migration
 * snapshot work uses it).  A driver with a VM state area implements
 * co_load_vmstate/co_save_vmstate; any other node passes the request to its
 * primary child (so filters and format layers over a qcow2 node work, as
 * in QEMU), and a node without either answers -ENOTSUP.
 */
#include <errno.h>

#include "strata/backend.h"
#include "strata/block-driver.h"

static int coroutine_fn rw_vmstate(BlockNode *bs, IOVec *qiov, int64_t pos,
                                   bool is_read)
{
    const BlockDriver *drv = bs->drv;
    int ret;

    if (!drv) {
        return -ENOMEDIUM;
    }
    if (pos < 0) {
        return -EINVAL;
    }
    node_inc_in_flight(bs);
    if (is_read ? drv->co_load_vmstate != NULL
                : drv->co_save_vmstate != NULL) {
        ret = is_read ? drv->co_load_vmstate(bs, qiov, pos)
                      : drv->co_save_vmstate(bs, qiov, pos);
    } else {
        BlockNode *child = node_primary_child(bs);
        ret = child ? rw_vmstate(child, qiov, pos, is_read) : -ENOTSUP;
    }
    node_dec_in_flight(bs);
    return ret;
}

int coroutine_fn node_co_load_vmstate(BlockNode *bs, IOVec *qiov, int64_t pos)
{
    return rw_vmstate(bs, qiov, pos, true);
}

int coroutine_fn node_co_save_vmstate(BlockNode *bs, IOVec *qiov, int64_t pos)
{
    return rw_vmstate(bs, qiov, pos, false);
}

typedef struct {
    BlockBackend *blk;
    void *buf;
    int64_t pos, size;
    bool is_read;
    int ret;
} VmstateReq;

static void coroutine_fn blk_vmstate_co(void *opaque)
{
    VmstateReq *r = opaque;
    BlockNode *bs = blk_node(r->blk);
    IOVec qiov;

    if (!bs) {
        r->ret = -ENOMEDIUM;
        return;
    }
    iovec_init_buf(&qiov, r->buf, (size_t)r->size);
    r->ret = rw_vmstate(bs, &qiov, r->pos, r->is_read);
    iovec_destroy(&qiov);
    /* Without a write cache, saved state is on disk when we return. */
    if (r->ret >= 0 && !r->is_read && !blk_enable_write_cache(r->blk)) {
        r->ret = node_co_flush(bs);
    }
    if (r->ret >= 0) {
        r->ret = 0;
    }
}

static int blk_vmstate(VmstateReq *r)
{
    if (r->size < 0) {
        return -EINVAL;
    }
    if (in_coroutine()) {
        blk_vmstate_co(r);
    } else {
        co_run_sync(blk_vmstate_co, r);
    }
    return r->ret;
}

int blk_load_vmstate(BlockBackend *blk, void *buf, int64_t pos, int64_t size)
{
    VmstateReq r = { blk, buf, pos, size, true, 0 };
    return blk_vmstate(&r);
}

int blk_save_vmstate(BlockBackend *blk, const void *buf, int64_t pos,
                     int64_t size)
{
    VmstateReq r = { blk, (void *)buf, pos, size, false, 0 };
    return blk_vmstate(&r);
}
