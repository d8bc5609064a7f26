/*
 * Emptying an image (after a commit): every guest mapping goes.
 *
 * QEMU rebuilds the image as header, one refcount table cluster, one
 * refcount block and the L1 table, and cuts the file after them, with the
 * dirty bit set while the refcounts are wrong.  Where the image already
 * has that layout (as created: table at cluster 1, block 0 at cluster 2,
 * L1 table at cluster 3), the same file is reached here without ever
 * being inconsistent: the L1 entries go first (everything else is then
 * only leaked), then the table entries of the other refcount blocks, then
 * block 0 gets its final contents; a crash between any two steps (or
 * inside one) leaves leaks at most.  The dirty bit is still set meanwhile,
 * as QEMU sets it, so that the next read-write open repairs those leaks;
 * and an I/O error before block 0 is complete in memory leaves the node
 * unusable, as QEMU's does (no metadata written at close, the dirty bit
 * left for the repair), one after it is retried at close.  Other
 * images (and those with snapshots, bitmaps, LUKS or a data file, which
 * QEMU does not rebuild either) drop every cluster mapping instead and
 * discard the freed clusters.
 */
#include <errno.h>
#include <string.h>

#include "qcow2.h"

static bool can_rebuild(const Qcow2State *s, uint64_t l1_clusters)
{
    uint64_t cs = s->cluster_size;

    return s->version >= 3 && s->nb_snapshots == 0 &&
           !(s->has_bitmaps_ext && s->bitmaps_ext.nb_bitmaps) &&
           3 + l1_clusters <= s->refcount_block_size &&
           s->crypt_method != QCOW2_CRYPT_LUKS && !qcow2_has_data_file(s) &&
           s->refcount_table_offset == cs &&
           s->refcount_table_size == cs / 8 &&
           (s->refcount_table[0] & REFT_OFFSET_MASK) == 2 * cs &&
           s->l1_table_offset == 3 * cs;
}

/* Lock held. */
static int coroutine_fn rebuild_empty(BlockNode *bs, uint64_t l1_clusters)
{
    Qcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    int ret;

    /* Nothing cached may be written over the new layout later. */
    ret = qcow2_cache_flush(s->l2_cache);
    if (ret >= 0) {
        ret = qcow2_cache_flush(s->refcount_cache);
    }
    if (ret < 0) {
        return ret;
    }
    qcow2_cache_empty(s->l2_cache);
    qcow2_cache_empty(s->refcount_cache);
    ret = qcow2_set_incompat_bit(bs, QCOW2_INCOMPAT_DIRTY);
    if (ret < 0) {
        return ret;
    }
    /* Ours to clear: at the end, or at close if the last flush fails. */
    s->dirty_set_by_us = true;

    /* No guest mapping: every L2 table and data cluster is only leaked. */
    child_debug_event(bs->file, BLKDBG_L1_UPDATE);
    ret = child_co_pwrite_zeroes(bs->file, (int64_t)s->l1_table_offset,
                                 (int64_t)(l1_clusters * cs), 0);
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        goto unusable;
    }
    memset(s->l1_table, 0, (size_t)s->l1_size * 8);

    /*
     * Only refcount block 0 stays in the table (the others are leaked
     * now); its entry is written again as QEMU writes it, so the file
     * holds what QEMU's does.
     */
    child_debug_event(bs->file, BLKDBG_EMPTY_IMAGE_PREPARE);
    ret = child_co_pwrite_zeroes(bs->file, (int64_t)cs + 8,
                                 (int64_t)cs - 8, 0);
    if (ret >= 0) {
        uint64_t be = htobe64(2 * cs);
        child_debug_event(bs->file, BLKDBG_REFTABLE_UPDATE);
        /* QEMU announces the block as it enters it in the table. */
        child_debug_event(bs->file, BLKDBG_REFBLOCK_ALLOC);
        ret = child_co_pwrite(bs->file, (int64_t)cs, 8, &be, 0);
    }
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        goto unusable;
    }
    memset(s->refcount_table + 1, 0, (s->refcount_table_size - 1) * 8);
    s->max_refcount_index = 0;

    /*
     * Block 0's final contents: the clusters kept (header, table, block,
     * L1 table) already count 1, everything else goes to 0, so any part
     * of this write is consistent.
     */
    uint64_t used = 3 + DIV_ROUND_UP((uint64_t)s->l1_size * 8, cs);
    void *rb;
    ret = qcow2_cache_get_empty(s->refcount_cache, 2 * cs, &rb);
    if (ret < 0) {
        goto unusable;
    }
    memset(rb, 0, cs);
    qcow2_cache_put(s->refcount_cache, &rb);
    for (uint64_t c = 0; c < used && ret >= 0; c++) {
        ret = qcow2_update_cluster_refcount(bs, c, 1, QCOW2_DISCARD_NEVER);
    }
    if (ret < 0) {
        goto unusable;
    }
    s->free_cluster_index = used;
    s->free_byte_offset = 0;
    s->metadata_prealloc_checked = false;

    /*
     * The node is right in memory now; writing block 0 and clearing the
     * dirty bit may fail and be tried again at close, as in QEMU (until
     * then the file only leaks).
     */
    ret = qcow2_mark_clean(bs);
    if (ret < 0) {
        return ret;
    }

    GError *err = NULL;
    ret = child_co_truncate(bs->file, (int64_t)((3 + l1_clusters) * cs),
                            false, PREALLOC_MODE_OFF, &err);
    if (ret < 0) {
        warn_print("%s", err->message);
        g_error_free(err);
    }
    return ret;

unusable:
    /*
     * The tables in memory may no longer be what the file holds; like
     * QEMU, which drops the driver here, refuse all further I/O and write
     * nothing at close, leaving the image dirty for its repair.
     */
    s->corrupt = true;
    return ret;
}

int coroutine_fn qcow2_make_empty(BlockNode *bs, GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t l1_clusters;
    int ret;

    if (s->corrupt) {
        error_setg(errp, "Image is corrupt");
        return -ENOMEDIUM;
    }
    co_mutex_lock(&s->lock);
    qcow2_wait_inflight(bs, 0, UINT64_MAX);
    l1_clusters = DIV_ROUND_UP((uint64_t)s->l1_size, s->cluster_size / 8);
    if (can_rebuild(s, l1_clusters)) {
        ret = rebuild_empty(bs, l1_clusters);
    } else {
        /*
         * Not zero clusters: the data must come from the backing file
         * again.  The clusters were a snapshot's to QEMU too (it passes
         * their discards by default).
         */
        ret = qcow2_discard_range(bs, 0, s->size, QCOW2_DISCARD_SNAPSHOT);
        if (ret >= 0) {
            ret = qcow2_cache_flush(s->l2_cache);
        }
        if (ret >= 0) {
            ret = qcow2_cache_flush(s->refcount_cache);
        }
    }
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to empty %s", bs->filename);
    }
    return ret;
}
