/*
 * The qcow2 VM state area.  As in QEMU, it lives in the image's own guest
 * address space, after the disk: from the first L2-table boundary at or
 * after the disk size (QEMU's qcow2_vm_state_offset).  It is written and
 * read through the ordinary data path, so its clusters are allocated,
 * copied on write and refcounted like the disk's, and an internal
 * snapshot's L1 table (which covers it once the L1 table has grown) keeps
 * the state saved with it.
 *
 * Once a snapshot keeps the state, the active table lets go of it, as
 * QEMU's qcow2_snapshot_create does: else the clusters stay shared, and
 * the next save onto the image copies every one of them on write (new
 * cluster, a read of whatever part of the old one the state leaves
 * unwritten, the old one's refcount lowered after a sync of the L2 table),
 * where a save onto a released area only allocates, as the first did.
 */
#include <errno.h>

#include "qcow2.h"

int64_t qcow2_vm_state_offset(const Qcow2State *s)
{
    uint64_t l2_span = s->cluster_size << s->l2_bits;
    return (int64_t)(DIV_ROUND_UP(s->size, l2_span) * l2_span);
}

int coroutine_fn qcow2_co_save_vmstate(BlockNode *bs, IOVec *qiov,
                                       int64_t pos)
{
    Qcow2State *s = bs->opaque;
    uint64_t l2_span = s->cluster_size << s->l2_bits;
    int64_t offset = qcow2_vm_state_offset(s) + pos;
    int64_t bytes = (int64_t)qiov->size;
    int ret = 0;

    if (s->corrupt) {
        return -ENOMEDIUM;
    }
    if (pos > INT64_MAX - qcow2_vm_state_offset(s) - bytes) {
        return -EFBIG;
    }
    child_debug_event(bs->file, BLKDBG_VMSTATE_SAVE);
    /* Past the disk, the L1 table may first have to grow (QEMU too). */
    uint64_t need = DIV_ROUND_UP((uint64_t)(offset + bytes), l2_span);
    if (need > s->l1_size) {
        co_mutex_lock(&s->lock);
        ret = need * 8 > QCOW2_MAX_L1_BYTES ? -EFBIG
                                           : qcow2_grow_l1(bs, (uint32_t)need);
        co_mutex_unlock(&s->lock);
    }
    if (ret < 0 || !bytes) {
        return ret;
    }
    return qcow2_co_pwritev(bs, offset, bytes, qiov, 0, 0);
}

int coroutine_fn qcow2_co_load_vmstate(BlockNode *bs, IOVec *qiov,
                                       int64_t pos)
{
    Qcow2State *s = bs->opaque;
    int64_t offset = qcow2_vm_state_offset(s) + pos;

    if (s->corrupt) {
        return -ENOMEDIUM;
    }
    if (pos > INT64_MAX - qcow2_vm_state_offset(s) - (int64_t)qiov->size) {
        return -EFBIG;
    }
    child_debug_event(bs->file, BLKDBG_VMSTATE_LOAD);
    if (!qiov->size) {
        return 0;
    }
    return bs->drv->co_preadv(bs, offset, (int64_t)qiov->size, qiov, 0, 0);
}

int coroutine_fn qcow2_vm_state_release(BlockNode *bs, uint64_t size)
{
    Qcow2State *s = bs->opaque;
    int64_t offset = qcow2_vm_state_offset(s);

    if (!size) {
        return 0;
    }
    /*
     * QEMU's discard there (not a full one): the entries become zero
     * clusters on v3 images, as in QEMU's images.  The snapshot still
     * holds every cluster, so none is freed and nothing reaches the file.
     */
    return qcow2_co_pdiscard(bs, offset,
                             (int64_t)ROUND_UP(size, s->cluster_size));
}
