/*
 * Emptying an image (after a commit): every guest mapping goes.
 *
 * Where nothing but the active layer uses clusters (v3, no snapshots, no
 * bitmaps, no LUKS header, no external data file), the image is rebuilt as
 * QEMU does: header, one refcount table cluster, one refcount block, the L1
 * table, and the file cut after them.  Refcounts are wrong in between, so
 * the dirty bit is set for the duration: a crash leaves an image that is
 * repaired on open.  Otherwise every cluster mapping is dropped and the
 * freed clusters are discarded in the file.
 */
#include <errno.h>
#include <string.h>

#include "qcow2.h"

static bool can_rebuild(const Qcow2State *s, uint64_t l1_clusters)
{
    return s->version >= 3 && s->nb_snapshots == 0 &&
           !(s->has_bitmaps_ext && s->bitmaps_ext.nb_bitmaps) &&
           3 + l1_clusters <= s->refcount_block_size &&
           s->crypt_method != QCOW2_CRYPT_LUKS && !qcow2_has_data_file(s);
}

/* Lock held.  On failure after the first write the image is unusable. */
static int coroutine_fn rebuild_empty(BlockNode *bs, uint64_t l1_clusters,
                                      bool *broken)
{
    Qcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t *reftable;
    int ret;

    *broken = false;
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

    *broken = true;
    child_debug_event(bs->file, BLKDBG_L1_UPDATE);
    ret = child_co_pwrite_zeroes(bs->file, (int64_t)s->l1_table_offset,
                                 (int64_t)(l1_clusters * cs), 0);
    if (ret < 0) {
        return ret;
    }
    memset(s->l1_table, 0, (size_t)s->l1_size * 8);

    /* Room for the refcount table, one refcount block and the L1 table. */
    child_debug_event(bs->file, BLKDBG_EMPTY_IMAGE_PREPARE);
    ret = child_co_pwrite_zeroes(bs->file, (int64_t)cs,
                                 (int64_t)((2 + l1_clusters) * cs), 0);
    if (ret < 0) {
        return ret;
    }

    child_debug_event(bs->file, BLKDBG_L1_UPDATE);
    child_debug_event(bs->file, BLKDBG_REFTABLE_UPDATE);
    struct __attribute__((packed)) {
        uint64_t l1_offset;
        uint64_t reftable_offset;
        uint32_t reftable_clusters;
    } hdr = { htobe64(3 * cs), htobe64(cs), htobe32(1) };
    ret = child_co_pwrite(bs->file, offsetof(Qcow2DiskHeader,
                                             l1_table_offset),
                          sizeof(hdr), &hdr, 0);
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        return ret;
    }
    s->l1_table_offset = 3 * cs;

    reftable = g_try_new0(uint64_t, cs / 8);
    if (!reftable) {
        return -ENOMEM;
    }
    g_free(s->refcount_table);
    s->refcount_table = reftable;
    s->refcount_table_offset = cs;
    s->refcount_table_size = (uint32_t)(cs / 8);
    s->max_refcount_index = 0;

    child_debug_event(bs->file, BLKDBG_REFBLOCK_ALLOC);
    uint64_t be = htobe64(2 * cs);
    ret = child_co_pwrite(bs->file, (int64_t)cs, 8, &be, 0);
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        return ret;
    }
    s->refcount_table[0] = 2 * cs;

    /* Header, table, block and L1 (none if the L1 table is empty). */
    uint64_t used = 3 + DIV_ROUND_UP((uint64_t)s->l1_size * 8, cs);
    for (uint64_t c = 0; c < used; c++) {
        ret = qcow2_update_cluster_refcount(bs, c, 1, QCOW2_DISCARD_NEVER);
        if (ret < 0) {
            return ret;
        }
    }
    s->free_cluster_index = used;
    s->free_byte_offset = 0;
    s->metadata_prealloc_checked = false;
    ret = qcow2_cache_flush(s->refcount_cache);
    if (ret < 0) {
        return ret;
    }
    *broken = false;
    ret = qcow2_clear_incompat_bit(bs, QCOW2_INCOMPAT_DIRTY);
    if (ret < 0) {
        return ret;
    }

    GError *err = NULL;
    ret = child_co_truncate(bs->file, (int64_t)((3 + l1_clusters) * cs),
                            false, PREALLOC_OFF, &err);
    if (ret < 0) {
        warn_print("%s", err->message);
        g_error_free(err);
    }
    return ret;
}

int coroutine_fn qcow2_make_empty(BlockNode *bs, GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t l1_clusters;
    bool broken = false;
    int ret;

    if (s->corrupt) {
        error_setg(errp, "Image is corrupt");
        return -ENOMEDIUM;
    }
    co_mutex_lock(&s->lock);
    qcow2_wait_inflight(bs, 0, UINT64_MAX);
    l1_clusters = DIV_ROUND_UP((uint64_t)s->l1_size, s->cluster_size / 8);
    if (can_rebuild(s, l1_clusters)) {
        ret = rebuild_empty(bs, l1_clusters, &broken);
        if (broken) {
            /* The tables in memory no longer describe the file. */
            s->corrupt = true;
        }
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
        error_setg_errno(errp, -ret, "Could not empty the image");
    }
    return ret;
}
