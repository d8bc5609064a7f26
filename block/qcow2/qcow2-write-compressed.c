/*
 * qcow2 compressed writes (qcow2_co_pwritev_compressed): one whole cluster
 * at a time, compressed in the thread pool (qcow2-compress.c) and stored
 * only for a guest cluster that maps no data yet (QEMU 7.2 refuses to
 * overwrite); a cluster that does not get smaller is written as plain
 * data.
 */
#include <errno.h>

#include "qcow2-compress.h"
#include "qcow2-write-int.h"

static int coroutine_fn write_compressed_cluster(BlockNode *bs,
                                                 int64_t offset,
                                                 int64_t bytes, IOVec *qiov,
                                                 size_t qiov_offset)
{
    Qcow2State *s = bs->opaque;
    uint8_t *in = NULL, *out = NULL;
    ssize_t len;
    int ret;

    if (qcow2_has_data_file(s)) {
        return -ENOTSUP;
    }
    if (bytes == 0) {
        return 0;
    }
    if (qcow2_offset_into_cluster(s, (uint64_t)offset)) {
        return -EINVAL;
    }
    if ((uint64_t)bytes != s->cluster_size &&
        ((uint64_t)bytes > s->cluster_size ||
         (uint64_t)(offset + bytes) != s->size)) {
        return -EINVAL;
    }
    if (s->corrupt) {
        return -ENOMEDIUM;
    }

    /* The last cluster of an unaligned image is padded with zeroes. */
    in = g_malloc0(s->cluster_size);
    out = g_malloc(s->cluster_size);
    iov_to_buf(qiov->iov, qiov->niov, qiov_offset, in, (size_t)bytes);
    /* Compressed must be smaller than a cluster, or it is not worth it. */
    len = qcow2_co_compress(s->compression_type, out, s->cluster_size - 1,
                            in, s->cluster_size);
    if (len == -ENOSPC) {
        IOVec q;
        iovec_init_buf(&q, in, (size_t)bytes);
        ret = qcow2_co_pwritev(bs, offset, bytes, &q, 0, 0);
        iovec_destroy(&q);
        goto out;
    }
    if (len < 0) {
        ret = -EIO;
        goto out;
    }

    co_mutex_lock(&s->lock);
    qcow2_wait_inflight(bs, (uint64_t)offset, (uint64_t)(offset + bytes));
    unsigned l2i;
    void *l2;
    ret = qcow2_get_l2_for_write(bs, (uint64_t)offset, &l2, &l2i);
    if (ret < 0) {
        co_mutex_unlock(&s->lock);
        goto out;
    }
    /* Compression never overwrites: QEMU refuses an allocated cluster. */
    uint64_t e = qcow2_l2_entry(s, l2, l2i);
    if (e & (L2E_OFFSET_MASK | QCOW_OFLAG_COMPRESSED)) {
        qcow2_cache_put(s->l2_cache, &l2);
        co_mutex_unlock(&s->lock);
        ret = -EIO;
        goto out;
    }
    uint64_t host;
    ret = qcow2_alloc_bytes(bs, (uint64_t)len, &host);
    if (ret < 0) {
        qcow2_cache_put(s->l2_cache, &l2);
        co_mutex_unlock(&s->lock);
        goto out;
    }
    ret = qcow2_check_overlap(bs, 0, host, (uint64_t)len);
    if (ret >= 0) {
        child_debug_event(bs->file, BLKDBG_WRITE_COMPRESSED);
        ret = child_co_pwrite(bs->file, (int64_t)host, len, out, 0);
    }
    if (ret >= 0) {
        ret = qcow2_mark_dirty(bs);
    }
    if (ret >= 0) {
        uint64_t nb = ((host + (uint64_t)len - 1) >> 9) - (host >> 9);
        child_debug_event(bs->file, BLKDBG_L2_UPDATE_COMPRESSED);
        qcow2_set_l2_entry(s, l2, l2i, QCOW_OFLAG_COMPRESSED |
                           (nb << s->csize_shift) | host);
        if (s->extended_l2) {
            qcow2_set_l2_bitmap(s, l2, l2i, 0);
        }
        qcow2_cache_mark_dirty(s->l2_cache, l2);
    } else {
        qcow2_free_clusters(bs, host, (uint64_t)len, QCOW2_DISCARD_NEVER);
    }
    qcow2_cache_put(s->l2_cache, &l2);
    co_mutex_unlock(&s->lock);
out:
    g_free(in);
    g_free(out);
    return ret;
}

int coroutine_fn qcow2_co_pwritev_compressed(BlockNode *bs, int64_t offset,
                                             int64_t bytes, IOVec *qiov,
                                             size_t qiov_offset)
{
    Qcow2State *s = bs->opaque;

    if (bytes == 0) {
        /*
         * The writer is done: end the file on a sector boundary, as QEMU
         * does, so that sector-based readers see whole compressed clusters
         * (lengths come rounded up to whole sectors: that is the size).
         */
        int64_t len;

        node_invalidate_length(bs->file->bs);
        len = node_getlength(bs->file->bs);
        return len < 0 ? (int)len
                       : child_co_truncate(bs->file, len, false, PREALLOC_MODE_OFF,
                                           NULL);
    }
    if (qcow2_offset_into_cluster(s, (uint64_t)offset)) {
        return -EINVAL;
    }
    while (bytes > 0) {
        int64_t n = MIN(bytes, (int64_t)s->cluster_size);
        int ret = write_compressed_cluster(bs, offset, n, qiov, qiov_offset);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qiov_offset += (size_t)n;
        bytes -= n;
    }
    return 0;
}
