/*
 * Growing an image with preallocation (qemu-img resize --preallocation,
 * later QMP block_resize), as QEMU 7.2 lays it out so that qemu-img map
 * and info read the same:
 *
 *   metadata, or any mode with an external data file: every new guest
 *     cluster gets a host cluster through the allocation path (kept if
 *     the image owns it already), nothing is written in the range, and the
 *     file (or data file, with the mode) is made long enough;
 *   falloc, full: new refcount structures sized for the new clusters go
 *     past the last cluster in use, the data clusters right after them in
 *     one run (from the cluster holding the old end on), the file is
 *     extended over them with the mode (fallocate, or written zeroes),
 *     and the L2 entries point at them.
 */
#include <errno.h>

#include "qcow2.h"

/* Metadata preallocation of [from, to); QEMU's preallocate_co. */
static int coroutine_fn prealloc_metadata(BlockNode *bs, uint64_t from,
                                          uint64_t to, PreallocMode mode,
                                          GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t host_end;
    int64_t len;
    int ret;

    ret = qcow2_prealloc_range(bs, from, to - from, &host_end);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Allocating clusters failed");
        return ret;
    }
    /*
     * Reads of the new clusters must not run past the end of the file.
     * Copy-on-write may have written past the length the node knew.
     */
    node_invalidate_length(s->data_file->bs);
    len = node_getlength(s->data_file->bs);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not get file size");
        return (int)len;
    }
    if (host_end > (uint64_t)len) {
        ret = child_co_truncate(s->data_file, (int64_t)host_end, false,
                                mode == PREALLOC_MODE_METADATA ? PREALLOC_MODE_OFF
                                                          : mode, errp);
    }
    return ret;
}

/* falloc/full without an external data file. */
static int coroutine_fn prealloc_data(BlockNode *bs, uint64_t from,
                                      uint64_t to, PreallocMode mode,
                                      bool zero, GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t used, start, got, nb_data, nb_l2;
    int ret;

    /* Past the last cluster in use (not past junk at the file's end). */
    ret = qcow2_end_of_used(bs, false, &used);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to find the last cluster");
        return ret;
    }
    if (used == 0) {
        int64_t len = node_getlength(bs->file->bs);
        if (len < 0) {
            error_setg_errno(errp, (int)-len, "Failed to inquire current "
                             "file length");
            return (int)len;
        }
        used = qcow2_size_to_clusters(s, (uint64_t)len);
    }

    /*
     * The refcount structures cover the data clusters and, generously,
     * every L2 table they might need (one more for an unaligned edge), so
     * that linking the clusters allocates no refcount block.
     */
    nb_data = (ROUND_UP(to, s->cluster_size) -
               qcow2_start_of_cluster(s, from)) >> s->cluster_bits;
    nb_l2 = DIV_ROUND_UP(nb_data, s->cluster_size / s->l2_entry_size) + 1;
    ret = qcow2_refcount_area(bs, used << s->cluster_bits, nb_data + nb_l2,
                              &start);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to resize refcount structures");
        return ret;
    }
    ret = qcow2_alloc_clusters_at(bs, start, nb_data, &got);
    if (ret >= 0 && got != nb_data) {
        if (got) {
            qcow2_free_clusters(bs, start, got << s->cluster_bits,
                                QCOW2_DISCARD_NEVER);
        }
        ret = -ENOSPC;
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to allocate data clusters");
        return ret;
    }

    ret = child_co_truncate(bs->file,
                            (int64_t)(start + (nb_data << s->cluster_bits)),
                            false, mode, errp);
    if (ret < 0) {
        error_prefix(errp, "Failed to resize underlying file: ");
        qcow2_free_clusters(bs, start, nb_data << s->cluster_bits,
                            QCOW2_DISCARD_OTHER);
        return ret;
    }

    ret = qcow2_link_clusters(bs, from, start, nb_data, zero);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to update L2 tables");
        qcow2_free_clusters(bs, start, nb_data << s->cluster_bits,
                            QCOW2_DISCARD_OTHER);
    }
    return ret;
}

int coroutine_fn qcow2_grow_prealloc(BlockNode *bs, uint64_t from, uint64_t to,
                                     PreallocMode mode, bool *zero,
                                     GError **errp)
{
    Qcow2State *s = bs->opaque;

    if (mode == PREALLOC_MODE_METADATA || qcow2_has_data_file(s)) {
        return prealloc_metadata(bs, from, to, mode, errp);
    }
    /*
     * The new clusters come from the file's new end, which reads as
     * zeroes: marked allocated they hide the backing file (QEMU does this
     * when the backing file would show through), and nothing else needs
     * zeroing.
     */
    int ret = prealloc_data(bs, from, to, mode, *zero, errp);
    if (ret >= 0) {
        *zero = false;
    }
    return ret;
}
