/*
 * qcow2 resize: growing (with preallocation as qemu-img lays it out) and
 * shrinking (L2 tables past the new end dropped, as in QEMU).
 */
#include <errno.h>

#include "qcow2.h"
#include "qcow2-bitmap.h"

/*
 * L2 tables wholly past the new end go, as in QEMU's shrink: their L1
 * entries are cleared on disk (and synced) before their clusters are
 * freed.  The L1 table keeps its size.
 */
static int coroutine_fn shrink_l1(BlockNode *bs, uint64_t keep)
{
    Qcow2State *s = bs->opaque;
    uint64_t *old;
    uint32_t first = (uint32_t)MIN(keep, (uint64_t)s->l1_size);
    bool any = false;
    int ret;

    if (first >= s->l1_size) {
        return 0;
    }
    ret = qcow2_cache_flush(s->l2_cache);
    if (ret < 0) {
        return ret;
    }
    old = g_new(uint64_t, s->l1_size - first);
    for (uint32_t i = first; i < s->l1_size; i++) {
        old[i - first] = s->l1_table[i] & L1E_OFFSET_MASK;
        any |= old[i - first] != 0;
    }
    if (!any) {
        g_free(old);
        return 0;
    }
    uint64_t *zero = g_new0(uint64_t, s->l1_size - first);
    child_debug_event(bs->file, BLKDBG_L1_SHRINK_WRITE_TABLE);
    ret = child_co_pwrite(bs->file,
                          (int64_t)(s->l1_table_offset + first * 8ull),
                          (int64_t)(s->l1_size - first) * 8, zero, 0);
    g_free(zero);
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        g_free(old);
        return ret;
    }
    child_debug_event(bs->file, BLKDBG_L1_SHRINK_FREE_L2_CLUSTERS);
    for (uint32_t i = first; i < s->l1_size; i++) {
        s->l1_table[i] = 0;
        if (old[i - first]) {
            qcow2_cache_discard(s->l2_cache, old[i - first]);
            qcow2_free_clusters(bs, old[i - first], s->cluster_size,
                                QCOW2_DISCARD_ALWAYS);
        }
    }
    g_free(old);
    return 0;
}

int coroutine_fn qcow2_co_truncate(BlockNode *bs, int64_t offset, bool exact,
                                   PreallocMode prealloc, GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t new_size = (uint64_t)offset;
    uint64_t l2_span = 1ull << (s->l2_bits + s->cluster_bits);
    int ret;

    if ((unsigned)prealloc >= PREALLOC_MODE__MAX) {
        error_setg(errp, "Unsupported preallocation mode");
        return -ENOTSUP;
    }
    if (new_size & 511) {
        error_setg(errp, "The new size must be a multiple of 512");
        return -EINVAL;
    }
    /* v3 snapshots record their own size; v2 ones do not. */
    if (s->nb_snapshots && s->version < 3) {
        error_setg(errp, "Can't resize a v2 image which has snapshots");
        return -ENOTSUP;
    }
    ret = qcow2_truncate_bitmaps_check(bs, errp);
    if (ret < 0) {
        return ret;
    }
    if (new_size < s->size && prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "Preallocation can't be used for shrinking an image");
        return -EINVAL;
    }
    if (s->corrupt) {
        error_setg(errp, "Image is corrupt; cannot be resized");
        return -ENOMEDIUM;
    }

    co_mutex_lock(&s->lock);
    qcow2_wait_inflight(bs, 0, UINT64_MAX);
    /*
     * A backing file longer than the old size would show through the new
     * area: it must read as zeroes instead (QEMU zero-fills it too).
     */
    bool zero_new = false;
    if (new_size > s->size && bs->backing) {
        int64_t blen = node_getlength(bs->backing->bs);
        if (blen < 0) {
            error_setg_errno(errp, (int)-blen, "Could not get backing file "
                             "size");
            ret = (int)blen;
            goto out;
        }
        zero_new = blen > (int64_t)s->size;
    }
    if (new_size < s->size) {
        /* Whole clusters past the new end go; the last one stays. */
        uint64_t from = ROUND_UP(new_size, s->cluster_size);
        if (from < s->size) {
            ret = qcow2_discard_range(bs, from, s->size - from,
                                      QCOW2_DISCARD_ALWAYS);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to discard cropped "
                                 "clusters");
                goto out;
            }
        }
        ret = shrink_l1(bs, DIV_ROUND_UP(new_size, l2_span));
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to reduce the number of L2 "
                             "tables");
            goto out;
        }
        ret = qcow2_shrink_reftable(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to discard unused refblocks");
            goto out;
        }
    } else {
        uint64_t need = DIV_ROUND_UP(new_size, l2_span);
        if (need > UINT32_MAX) {
            error_setg(errp, "The new size is too large for qcow2");
            ret = -EFBIG;
            goto out;
        }
        ret = qcow2_grow_l1(bs, (uint32_t)need);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to grow the L1 table");
            goto out;
        }
    }
    /*
     * As QEMU: an external data file follows the image's size, both ways
     * (exactly when the caller asks for an exact size).  A raw one that
     * grows gets the new area mapped first and then only has to be long
     * enough, as after QEMU's metadata preallocation.
     */
    if (prealloc != PREALLOC_MODE_OFF) {
        ret = qcow2_grow_prealloc(bs, s->size, new_size, prealloc, &zero_new,
                                  errp);
        /* Block status asks again whether the image looks preallocated. */
        s->metadata_prealloc_checked = false;
        if (ret < 0) {
            goto out;
        }
        /* The new metadata is written before the size makes it used. */
        ret = qcow2_cache_write(s->l2_cache);
        if (ret >= 0) {
            ret = qcow2_cache_write(s->refcount_cache);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to flush the preallocated "
                             "area to disk");
            goto out;
        }
    } else if (s->data_file && s->data_file != bs->file) {
        bool map = qcow2_data_file_is_raw(s) && new_size > s->size;
        if (map) {
            ret = qcow2_map_raw_data(bs, s->size, new_size);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Could not map the new area");
                goto out;
            }
        }
        int64_t len = map ? node_getlength(s->data_file->bs) : -1;
        if (!map || len < (int64_t)new_size) {
            ret = child_co_truncate(s->data_file, offset, map ? false : exact,
                                    PREALLOC_MODE_OFF, errp);
            if (ret < 0) {
                goto out;
            }
        }
    }
    /* Metadata first, then the size that makes it reachable. */
    ret = qcow2_cache_flush(s->l2_cache);
    if (ret >= 0) {
        uint64_t be = htobe64(new_size);
        ret = child_co_pwrite(bs->file, offsetof(Qcow2DiskHeader, size), 8,
                              &be, 0);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to update the image size");
        goto out;
    }
    if (new_size < s->size && s->data_file == bs->file) {
        /* Give the freed tail of the file back, as QEMU does. */
        uint64_t end;
        ret = qcow2_cache_flush(s->refcount_cache);
        if (ret >= 0) {
            ret = qcow2_end_of_used(bs, false, &end);
        }
        int64_t file_len = node_getlength(bs->file->bs);
        if (ret >= 0 && file_len >= 0 &&
            (end << s->cluster_bits) < (uint64_t)file_len) {
            GError *err = NULL;
            if (child_co_truncate(bs->file, (int64_t)(end << s->cluster_bits),
                                  false, PREALLOC_MODE_OFF, &err) < 0) {
                warn_print("Failed to truncate the tail of the image: %s",
                           err->message);
                g_error_free(err);
            }
        }
    }
    uint64_t old_size = s->size;
    s->size = new_size;
    ret = 0;
    if (zero_new) {
        ret = qcow2_zero_new_area(bs, old_size, new_size);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to zero out the new area");
        }
    }
out:
    co_mutex_unlock(&s->lock);
    return ret;
}
