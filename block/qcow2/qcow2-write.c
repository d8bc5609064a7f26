/*
 * qcow2 guest writes: in place, allocating (with copy-on-write of the parts
 * of a cluster the request does not cover).  Zero writes and discards are
 * in qcow2-zero.c, compressed writes in qcow2-write-compressed.c.
 *
 * An in-place write needs the lock only to look up where the data goes.
 * An allocating write holds s->lock to look up, allocate its clusters and
 * claim their guest range (Qcow2Inflight, qcow2-inflight.c), drops it for
 * the copy-on-write reads and the data write, and takes it again to set
 * the L2 entries: allocating writes to other clusters run meanwhile, and
 * only requests that touch a claimed range wait for it
 * (tests/test-held-writes.c).  No reader sees
 * an entry pointing at data not yet written: the entry is set after the
 * data write.
 *
 * Order of writes in an allocating write: the data and its copied-on-write
 * neighbours go to the new cluster; then the L2 entry (in the cache, which
 * writes the new refcounts before it); only after the L2 table is on disk
 * is an old cluster's refcount lowered, so a crash can leak a cluster but
 * never leave an L2 entry pointing at a cluster that was reused.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "qcow2-write-int.h"

static int coroutine_fn write_l1_entry(BlockNode *bs, unsigned l1i)
{
    Qcow2State *s = bs->opaque;
    uint64_t be = htobe64(s->l1_table[l1i]);

    child_debug_event(bs->file, BLKDBG_L1_UPDATE);
    return child_co_pwrite(bs->file,
                           (int64_t)(s->l1_table_offset + (uint64_t)l1i * 8),
                           8, &be, 0);
}

/*
 * The L2 table for offset, ready to be changed: a table shared with a
 * snapshot (no copied flag) or missing is replaced by a new one first.
 */
int coroutine_fn qcow2_get_l2_for_write(BlockNode *bs, uint64_t offset,
                                        void **l2, unsigned *l2i)
{
    Qcow2State *s = bs->opaque;
    unsigned l1i = qcow2_l1_index(s, offset);
    uint64_t l1e, old, new_offset;
    void *t;
    int ret;

    if (l1i >= s->l1_size) {
        qcow2_signal_corruption(bs, true, -1, -1, "L1 index %u beyond the L1 "
                                "table (%" PRIu32 " entries)", l1i,
                                s->l1_size);
        return -EIO;
    }
    l1e = s->l1_table[l1i];
    old = l1e & L1E_OFFSET_MASK;
    *l2i = qcow2_l2_index(s, offset);
    if (old && qcow2_offset_into_cluster(s, old)) {
        qcow2_signal_corruption(bs, true, -1, -1, "L2 table offset %#" PRIx64
                                " unaligned (L1 index: %#x)", old, l1i);
        return -EIO;
    }
    if (old && (l1e & QCOW_OFLAG_COPIED)) {
        return qcow2_cache_get(s->l2_cache, old, l2);
    }

    ret = qcow2_alloc_clusters_for(bs, 1, &new_offset, "L2 table");
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_cache_get_empty(s->l2_cache, new_offset, &t);
    if (ret < 0) {
        qcow2_free_clusters(bs, new_offset, s->cluster_size,
                            QCOW2_DISCARD_NEVER);
        return ret;
    }
    if (old) {
        void *o;
        child_debug_event(bs->file, BLKDBG_L2_ALLOC_COW_READ);
        ret = qcow2_cache_get(s->l2_cache, old, &o);
        if (ret < 0) {
            qcow2_cache_put(s->l2_cache, &t);
            qcow2_cache_discard(s->l2_cache, new_offset);
            qcow2_free_clusters(bs, new_offset, s->cluster_size,
                                QCOW2_DISCARD_NEVER);
            return ret;
        }
        memcpy(t, o, s->cluster_size);
        qcow2_cache_put(s->l2_cache, &o);
        qcow2_cache_mark_dirty(s->l2_cache, t);

        /* The new table is on disk before L1 points at it. */
        child_debug_event(bs->file, BLKDBG_L2_ALLOC_WRITE);
        ret = qcow2_cache_flush(s->l2_cache);
    } else {
        /*
         * An empty table is all zeroes, so zeroing its cluster in the file
         * puts it on disk as well as writing it would, and in the tail the
         * file grows ahead of its writes (fresh images) that costs no I/O
         * at all.  Then one sync makes both the zeroes and the refcount of
         * the cluster durable before L1 points at it; the table stays
         * clean in the cache until entries are set, and is written like
         * any other L2 table later (after the refcounts it relies on).
         * Writing the table and syncing twice (refcounts, then the table)
         * cost two syncs per new table and wrote it twice.
         */
        memset(t, 0, s->cluster_size);
        child_debug_event(bs->file, BLKDBG_L2_ALLOC_WRITE);
        ret = qcow2_check_overlap(bs, QCOW2_OL_ACTIVE_L2, new_offset,
                                  s->cluster_size);
        if (ret >= 0) {
            ret = child_co_pwrite_zeroes(bs->file, (int64_t)new_offset,
                                         s->cluster_size, 0);
        }
        if (ret >= 0) {
            ret = qcow2_cache_flush_dependency(s->l2_cache);
        }
    }
    if (ret < 0) {
        goto fail;
    }
    s->l1_table[l1i] = new_offset | QCOW_OFLAG_COPIED;
    ret = write_l1_entry(bs, l1i);
    if (ret < 0) {
        s->l1_table[l1i] = l1e;
        goto fail;
    }
    if (old) {
        /*
         * Only this snapshot-shared table loses a user; the new L1 entry
         * is on disk first, in case the old table's cluster gets reused.
         */
        if (node_co_flush(bs->file->bs) >= 0) {
            qcow2_free_clusters(bs, old, s->cluster_size,
                                QCOW2_DISCARD_OTHER);
        }
    }
    *l2 = t;
    return 0;

fail:
    qcow2_cache_put(s->l2_cache, &t);
    /* Nothing points at the new table: give its cluster back. */
    qcow2_cache_discard(s->l2_cache, new_offset);
    qcow2_free_clusters(bs, new_offset, s->cluster_size, QCOW2_DISCARD_NEVER);
    return ret;
}

/* Lower the refcount of whatever host space an old L2 entry used. */
static int coroutine_fn free_old_entry(BlockNode *bs, uint64_t entry,
                                       Qcow2DiscardType dt)
{
    Qcow2State *s = bs->opaque;

    if (entry & QCOW_OFLAG_COMPRESSED) {
        uint64_t coffset = entry & s->cluster_offset_mask;
        uint64_t nb = ((entry >> s->csize_shift) & s->csize_mask) + 1;
        uint64_t csize = nb * QCOW2_COMPRESSED_SECTOR_SIZE -
                         (coffset & (QCOW2_COMPRESSED_SECTOR_SIZE - 1));
        return qcow2_free_clusters(bs, coffset, csize, dt);
    }
    uint64_t host = entry & L2E_OFFSET_MASK;
    if (!host || qcow2_has_data_file(s)) {
        /* Data file clusters are not refcounted. */
        return 0;
    }
    return qcow2_free_clusters(bs, host, s->cluster_size, dt);
}

/*
 * Clusters whose old entries need freeing: write the L2 table that no
 * longer points at them first (see the ordering rule at the top).
 */
int coroutine_fn qcow2_free_old_entries(BlockNode *bs, const uint64_t *old,
                                        unsigned n, Qcow2DiscardType dt)
{
    Qcow2State *s = bs->opaque;
    bool any = false;
    int ret;

    for (unsigned i = 0; i < n; i++) {
        any |= (old[i] & (L2E_OFFSET_MASK | QCOW_OFLAG_COMPRESSED)) != 0;
    }
    if (!any) {
        return 0;
    }
    ret = qcow2_cache_flush(s->l2_cache);
    if (ret < 0) {
        return ret;
    }
    for (unsigned i = 0; i < n; i++) {
        free_old_entry(bs, old[i], dt);
    }
    return 0;
}

/*
 * What QEMU's write path says about an L2 entry that breaks the format
 * (one space before the parenthesis; its read path prints two).
 */
static int coroutine_fn invalid_entry(BlockNode *bs, uint64_t offset,
                                      unsigned l2i)
{
    Qcow2State *s = bs->opaque;

    qcow2_signal_corruption(bs, true, -1, -1, "Invalid cluster entry found "
                            "(L2 offset: %#" PRIx64 ", L2 index: %#x)",
                            s->l1_table[qcow2_l1_index(s, offset)] &
                            L1E_OFFSET_MASK, l2i);
    return -EIO;
}

/*
 * Does the entry own a host cluster that may be written where it is (not
 * shared, not compressed)?  Offset 0 is a real cluster in an external data
 * file, except in a plain zero cluster.
 */
static bool entry_is_ours(const Qcow2State *s, uint64_t e)
{
    if (!(e & QCOW_OFLAG_COPIED) || (e & QCOW_OFLAG_COMPRESSED)) {
        return false;
    }
    if (e & L2E_OFFSET_MASK) {
        return true;
    }
    return qcow2_has_data_file(s) &&
           (s->extended_l2 || !(e & QCOW_OFLAG_ZERO));
}

/*
 * How many bytes from offset go to host clusters the image already owns,
 * contiguous on the host (QEMU's handle_copied): *host is where.  *meta is
 * true if some touched part is not plain data yet (a preallocated zero
 * cluster, zero or unallocated subclusters of an owned cluster): then the
 * L2 entries change after the write, and parts of those (sub)clusters the
 * request does not cover are copied; else the write is simply in place.
 */
static int coroutine_fn copied_run(BlockNode *bs, uint64_t offset,
                                   uint64_t bytes, uint64_t *n,
                                   uint64_t *host, bool *meta)
{
    Qcow2State *s = bs->opaque;
    unsigned l2i;
    void *l2;
    int ret;

    *n = 0;
    *meta = false;
    ret = qcow2_get_l2_table(bs, offset, &l2, &l2i);
    if (ret < 0 || !l2) {
        return ret;
    }
    uint64_t pos = offset, end = offset + bytes, expect = 0;
    while (pos < end && l2i < s->l2_size) {
        uint64_t e = qcow2_l2_entry(s, l2, l2i);
        uint64_t bm = qcow2_l2_bitmap(s, l2, l2i);
        uint64_t h = e & L2E_OFFSET_MASK;
        uint64_t cend = MIN(end, qcow2_start_of_cluster(s, pos) +
                                 s->cluster_size);

        if (entry_is_ours(s, e) && qcow2_offset_into_cluster(s, h)) {
            qcow2_cache_put(s->l2_cache, &l2);
            qcow2_signal_corruption(bs, true, -1, -1, "Data cluster offset "
                                    "%#" PRIx64 " unaligned (guest offset: "
                                    "%#" PRIx64 ")", h,
                                    qcow2_start_of_cluster(s, pos));
            return -EIO;
        }
        if (!entry_is_ours(s, e) || (*n && h != expect)) {
            break;
        }
        if (s->extended_l2) {
            unsigned a = (unsigned)(qcow2_offset_into_cluster(s, pos) >>
                                    s->subcluster_bits);
            unsigned b = (unsigned)((qcow2_offset_into_cluster(s, cend - 1))
                                    >> s->subcluster_bits);
            if (qcow2_subcluster_type(s, e, bm, a) == QCOW2_SC_INVALID) {
                qcow2_cache_put(s->l2_cache, &l2);
                return invalid_entry(bs, pos, l2i);
            }
            for (unsigned sc = a; sc <= b; sc++) {
                *meta |= qcow2_subcluster_type(s, e, bm, sc) !=
                         QCOW2_SC_NORMAL;
            }
        } else if (e & QCOW_OFLAG_ZERO) {
            *meta = true;
        }
        if (*n == 0) {
            *host = h + qcow2_offset_into_cluster(s, pos);
        }
        expect = h + s->cluster_size;
        *n += cend - pos;
        pos = cend;
        l2i++;
    }
    qcow2_cache_put(s->l2_cache, &l2);
    return 0;
}

static unsigned ctz32_or_32(uint32_t v)
{
    return v ? (unsigned)__builtin_ctz(v) : 32;
}

static unsigned clz32_or_32(uint32_t v)
{
    return v ? (unsigned)__builtin_clz(v) : 32;
}

/*
 * Where copy-on-write starts in the first cluster of a run (offset into
 * the cluster; `in` is where the request starts), as QEMU's
 * calculate_l2_meta: a compressed cluster is copied whole, a cluster being
 * replaced from its first allocated subcluster, a kept one (keep: the run
 * writes to the clusters it already owns) only from the touched
 * subcluster, and nothing at all before data that is already there.
 */
static uint64_t cow_head(const Qcow2State *s, uint64_t e, uint64_t bm,
                         uint64_t in, bool keep)
{
    unsigned sc = (unsigned)(in >> s->subcluster_bits);
    uint64_t sc_start = (uint64_t)sc << s->subcluster_bits;

    switch (qcow2_subcluster_type(s, e, bm, sc)) {
    case QCOW2_SC_COMPRESSED:
        return 0;
    case QCOW2_SC_NORMAL:
    case QCOW2_SC_ZERO_ALLOC:
    case QCOW2_SC_UNALLOC_ALLOC:
        if (keep) {
            return qcow2_subcluster_type(s, e, bm, sc) == QCOW2_SC_NORMAL
                   ? in : sc_start;
        }
        if (s->extended_l2) {
            unsigned first = ctz32_or_32((uint32_t)bm);
            return (uint64_t)MIN(sc, first) << s->subcluster_bits;
        }
        return 0;
    default:
        return sc_start;
    }
}

/* The same for where it ends in the last cluster (`in_end`: the request's
 * end, offset into that cluster, 1 to cluster_size). */
static uint64_t cow_tail(const Qcow2State *s, uint64_t e, uint64_t bm,
                         uint64_t in_end, bool keep)
{
    unsigned sc = (unsigned)((in_end - 1) >> s->subcluster_bits);
    uint64_t sc_end = ROUND_UP(in_end, s->subcluster_size);
    Qcow2SubclusterType t = qcow2_subcluster_type(s, e, bm, sc);

    switch (t) {
    case QCOW2_SC_COMPRESSED:
        return s->cluster_size;
    case QCOW2_SC_NORMAL:
    case QCOW2_SC_ZERO_ALLOC:
    case QCOW2_SC_UNALLOC_ALLOC:
        if (keep) {
            return t == QCOW2_SC_NORMAL ? in_end : sc_end;
        }
        if (s->extended_l2) {
            unsigned last = clz32_or_32((uint32_t)bm);
            unsigned skip = MIN(s->subclusters_per_cluster - sc - 1, last);
            return s->cluster_size - ((uint64_t)skip << s->subcluster_bits);
        }
        return s->cluster_size;
    default:
        return sc_end;
    }
}

/*
 * A write whose data comes by copy offload (qcow2_co_copy_range_to)
 * instead of a buffer: guest offset `offset` of the request is src_off in
 * src, the protocol node the source side found (the kernel copies, with
 * copy_file_range, between that file and ours).
 */
typedef struct CopySrc {
    BlockChild *src;
    int64_t src_off;
    uint64_t offset;
} CopySrc;

/* The data of [guest, guest + bytes) to host, from the copy source. */
static int coroutine_fn copy_to_host(BlockNode *bs, const CopySrc *cs,
                                     uint64_t host, uint64_t guest,
                                     uint64_t bytes)
{
    Qcow2State *s = bs->opaque;

    return child_co_copy_range_to(cs->src,
                                  cs->src_off + (int64_t)(guest - cs->offset),
                                  s->data_file, (int64_t)host, (int64_t)bytes,
                                  0, 0);
}

/*
 * One write that changes L2 entries, of up to one L2 table's worth, lock
 * held: either a run of clusters the image owns whose entries change
 * (keep: preallocated zeroes, zero or unallocated subclusters), or a run
 * of clusters that get new host clusters.  The request and whatever must
 * be copied around it go to the host in one write.  prealloc (qiov NULL):
 * only the clusters are set up, as QEMU's preallocation does: the parts
 * around the range are copied, the range itself is not written, and
 * subcluster bitmaps are left as they are.  *done is how much of bytes
 * was handled; *next_host where the run's host clusters end.
 */
static int coroutine_fn write_run(BlockNode *bs, uint64_t offset,
                                  uint64_t bytes, IOVec *qiov, size_t qoff,
                                  const CopySrc *cs, bool keep, bool prealloc,
                                  uint64_t *done, uint64_t *next_host)
{
    Qcow2State *s = bs->opaque;
    unsigned l2i;
    void *l2;
    uint8_t *head = NULL, *tail = NULL;
    uint64_t old_stack[QCOW2_MAX_RUN], bm_stack[QCOW2_MAX_RUN];
    uint64_t *old = old_stack, *old_bm = bm_stack;
    int ret;

    ret = qcow2_get_l2_for_write(bs, offset, &l2, &l2i);
    if (ret < 0) {
        return ret;
    }

    /*
     * The run: clusters from offset that are all kept or all replaced, up
     * to where QEMU's handle_alloc stops (the end of the L2 slice, at most
     * a request's worth), so that runs, and the refcount blocks placed
     * after them, fall where QEMU's do.
     */
    uint64_t cstart = qcow2_start_of_cluster(s, offset);
    uint64_t end = offset + bytes;
    uint64_t host0 = 0;
    uint64_t slice = s->l2_slice_size ? s->l2_slice_size : s->l2_size;
    uint64_t max_nb = MIN(slice - l2i % slice, s->l2_size - l2i);
    max_nb = MIN(max_nb, (uint64_t)QCOW2_REQUEST_MAX_BYTES >> s->cluster_bits);
    max_nb = MIN(max_nb, (end - cstart + s->cluster_size - 1) >>
                         s->cluster_bits);
    if (max_nb > QCOW2_MAX_RUN) {
        old = g_new(uint64_t, max_nb);
        old_bm = g_new(uint64_t, max_nb);
    }
    unsigned nb = 0;
    while (nb < max_nb && cstart + (uint64_t)nb * s->cluster_size < end) {
        uint64_t e = qcow2_l2_entry(s, l2, l2i + nb);
        uint64_t bm = qcow2_l2_bitmap(s, l2, l2i + nb);
        if (entry_is_ours(s, e) != keep ||
            (keep && nb > 0 &&
             (e & L2E_OFFSET_MASK) != host0 + (uint64_t)nb * s->cluster_size)) {
            break;
        }
        if (qcow2_subcluster_type(s, e, bm, 0) == QCOW2_SC_INVALID) {
            qcow2_cache_put(s->l2_cache, &l2);
            ret = invalid_entry(bs, cstart + (uint64_t)nb * s->cluster_size,
                                l2i + nb);
            goto out_arrays;
        }
        if (nb == 0) {
            host0 = e & L2E_OFFSET_MASK;
        }
        old[nb] = e;
        old_bm[nb] = bm;
        nb++;
    }
    if (nb == 0) {
        /* The caller looked at the same entries under the same lock. */
        qcow2_cache_put(s->l2_cache, &l2);
        ret = -EIO;
        goto out_arrays;
    }
    end = MIN(end, cstart + (uint64_t)nb * s->cluster_size);

    uint64_t new_host;
    bool fresh = !keep && !qcow2_has_data_file(s);
    if (keep) {
        new_host = host0;
    } else if (qcow2_has_data_file(s)) {
        new_host = cstart;          /* guest offset = host offset */
    } else {
        /*
         * As QEMU: within one request, continue where the previous run's
         * clusters ended, with as many clusters as are free there (the
         * run gets shorter); else anywhere.
         */
        uint64_t got = 0;
        if (*next_host) {
            ret = qcow2_alloc_clusters_at(bs, *next_host, nb, &got);
            if (ret < 0) {
                goto out;
            }
        }
        if (got) {
            new_host = *next_host;
            nb = (unsigned)got;
            end = MIN(end, cstart + (uint64_t)nb * s->cluster_size);
        } else {
            ret = qcow2_alloc_clusters(bs, nb, &new_host);
            if (ret < 0) {
                goto out;
            }
        }
    }
    *next_host = new_host + (uint64_t)nb * s->cluster_size;

    /* What must be copied around the request. */
    uint64_t last = cstart + (uint64_t)(nb - 1) * s->cluster_size;
    uint64_t cow_start = cstart + cow_head(s, old[0], old_bm[0],
                                           offset - cstart, keep);
    uint64_t cow_end = last + cow_tail(s, old[nb - 1], old_bm[nb - 1],
                                       end - last, keep);
    uint64_t head_len = offset - cow_start, tail_len = cow_end - end;
    IOVec v;
    iovec_init(&v, (qiov ? qiov->niov : 0) + 2);
    if (s->data_file == bs->file) {
        ret = qcow2_check_overlap(bs, 0, new_host + (cow_start - cstart),
                                  cow_end - cow_start);
        if (ret < 0) {
            goto out_v;
        }
    }

    /*
     * Copy-on-write of parts that read as zeroes (nothing below, or zero
     * clusters) need not move zero buffers: the clusters are zeroed in
     * the file, which costs no data transfer, and only the request is
     * written (QEMU's handle_alloc_space, which its preallocation does not
     * use).  Not for encrypted images, where zeroes in the file are not
     * zeroes in the guest.
     */
    bool zero_cow = (fresh || keep) && !prealloc && (head_len || tail_len) &&
                    !s->crypt_method &&
                    ((s->data_file->bs->drv->supported_zero_flags |
                      s->data_file->bs->supported_zero_flags) &
                     REQ_NO_FALLBACK);
    if (zero_cow && head_len) {
        ret = qcow2_is_zero(bs, cow_start, head_len);
        zero_cow = ret > 0;
    }
    if (zero_cow && tail_len) {
        ret = qcow2_is_zero(bs, end, tail_len);
        zero_cow = ret > 0;
    }
    if (ret < 0) {
        goto out_v;
    }

    /*
     * The slow part (copy-on-write reads, the data write) runs without the
     * lock, so that allocating writes to other clusters proceed in
     * parallel.  The clusters stay claimed meanwhile: no other request
     * changes their L2 entries, and the L2 table is fetched again after.
     */
    Qcow2Inflight *f = qcow2_claim(s, cstart,
                                   cstart + (uint64_t)nb * s->cluster_size,
                                   false);
    qcow2_cache_put(s->l2_cache, &l2);
    co_mutex_unlock(&s->lock);

    /* What the data write covers: the request and its copy-on-write. */
    uint64_t wstart = cow_start, wend = cow_end;
    if (zero_cow) {
        child_debug_event(bs->file, BLKDBG_CLUSTER_ALLOC_SPACE);
        if (child_co_pwrite_zeroes(s->data_file,
                                   (int64_t)(new_host + (cow_start - cstart)),
                                   (int64_t)(cow_end - cow_start),
                                   REQ_NO_FALLBACK) >= 0) {
            wstart = offset;
            wend = end;
            head_len = tail_len = 0;
        }
    }
    if (cs && (head_len || tail_len)) {
        /* An offloaded copy has no buffer to put copy-on-write data
         * around: the caller's read/write path does it. */
        ret = -ENOTSUP;
    } else if (head_len || tail_len) {
        child_debug_event(bs->file, BLKDBG_COW_READ);
    }
    if (ret >= 0 && head_len) {
        head = g_malloc(head_len);
        ret = qcow2_co_read_buf(bs, cow_start, head_len, head, false);
    }
    if (ret >= 0 && tail_len) {
        tail = g_malloc(tail_len);
        ret = qcow2_co_read_buf(bs, end, tail_len, tail, false);
    }
    if (ret >= 0 && prealloc) {
        /* Only what lies around the range: two writes, as QEMU's. */
        if (head_len) {
            child_debug_event(bs->file, BLKDBG_COW_WRITE);
            iovec_add(&v, head, head_len);
            ret = qcow2_data_pwritev(bs, new_host + (cow_start - cstart),
                                     cow_start, head_len, &v, 0);
            iovec_reset(&v);
        }
        if (ret >= 0 && tail_len) {
            child_debug_event(bs->file, BLKDBG_COW_WRITE);
            iovec_add(&v, tail, tail_len);
            ret = qcow2_data_pwritev(bs, new_host + (end - cstart), end,
                                     tail_len, &v, 0);
        }
    } else if (ret >= 0 && cs) {
        child_debug_event(bs->file, BLKDBG_WRITE_AIO);
        ret = copy_to_host(bs, cs, new_host + (offset - cstart), offset,
                           end - offset);
    } else if (ret >= 0) {
        if (head_len) {
            iovec_add(&v, head, head_len);
        }
        iovec_concat(&v, qiov, qoff, end - offset);
        if (tail_len) {
            iovec_add(&v, tail, tail_len);
        }
        child_debug_event(bs->file, BLKDBG_WRITE_AIO);
        ret = qcow2_data_pwritev(bs, new_host + (wstart - cstart), wstart,
                                 wend - wstart, &v, 0);
    }

    co_mutex_lock(&s->lock);
    if (ret >= 0) {
        ret = qcow2_get_l2_for_write(bs, offset, &l2, &l2i);
    }
    qcow2_release_claim(s, f);
    if (ret < 0) {
        /* Nothing points at the new clusters yet: give them back. */
        if (fresh) {
            qcow2_free_clusters(bs, new_host, (uint64_t)nb * s->cluster_size,
                                QCOW2_DISCARD_NEVER);
        }
        iovec_destroy(&v);
        g_free(head);
        g_free(tail);
        goto out_arrays;
    }

    ret = qcow2_mark_dirty(bs);
    if (ret < 0) {
        goto out_v;
    }
    for (unsigned i = 0; i < nb; i++) {
        uint64_t c = cstart + (uint64_t)i * s->cluster_size;
        qcow2_set_l2_entry(s, l2, l2i + i,
                           (new_host + (uint64_t)i * s->cluster_size) |
                           QCOW_OFLAG_COPIED);
        if (s->extended_l2 && !prealloc) {
            /* The subclusters written (request and copy) hold data now. */
            uint64_t lo = MAX(cow_start, c) - c;
            uint64_t hi = MIN(cow_end, c + s->cluster_size) - c;
            unsigned a = (unsigned)(lo >> s->subcluster_bits);
            unsigned b = (unsigned)((hi - 1) >> s->subcluster_bits) + 1;
            uint64_t range = (b == 32 ? 0xffffffffull : (1ull << b) - 1) &
                             ~((1ull << a) - 1);
            qcow2_set_l2_bitmap(s, l2, l2i + i,
                                (old_bm[i] | range) & ~(range << 32));
        }
    }
    qcow2_cache_mark_dirty(s->l2_cache, l2);
    *done = end - offset;
    if (!keep) {
        ret = qcow2_free_old_entries(bs, old, nb, QCOW2_DISCARD_OTHER);
    }

out_v:
    iovec_destroy(&v);
out:
    g_free(head);
    g_free(tail);
    qcow2_cache_put(s->l2_cache, &l2);
out_arrays:
    if (old != old_stack) {
        g_free(old);
        g_free(old_bm);
    }
    return ret;
}

/* A guest write; cs: the data comes by copy offload, qiov is NULL. */
static int coroutine_fn do_pwritev(BlockNode *bs, int64_t offset,
                                   int64_t bytes, IOVec *qiov,
                                   size_t qiov_offset, const CopySrc *cs)
{
    Qcow2State *s = bs->opaque;

    if (s->corrupt) {
        return -ENOMEDIUM;
    }
    uint64_t next_host = 0;     /* where the last run's clusters ended */
    while (bytes > 0) {
        uint64_t n = 0, host = 0;
        bool meta = false;
        int ret;

        co_mutex_lock(&s->lock);
        /* In-place writes to the same clusters may run side by side. */
        qcow2_wait_claims(bs, (uint64_t)offset, (uint64_t)(offset + bytes),
                          false);
        ret = copied_run(bs, (uint64_t)offset, (uint64_t)bytes, &n, &host,
                         &meta);
        if (ret >= 0 && n > 0 && !meta && s->data_file == bs->file) {
            ret = qcow2_check_overlap(bs, 0, host, n);
        }
        if (ret >= 0 && n > 0 && !meta) {
            /* As QEMU, an allocation that follows continues on the host. */
            next_host = host + n;
            /* Shared claim: discards and snapshots wait for the data. */
            Qcow2Inflight *f = qcow2_claim(s, (uint64_t)offset,
                                           (uint64_t)offset + n, true);
            co_mutex_unlock(&s->lock);
            child_debug_event(bs->file, BLKDBG_WRITE_AIO);
            ret = cs ? copy_to_host(bs, cs, host, (uint64_t)offset, n)
                     : qcow2_data_pwritev(bs, host, (uint64_t)offset, n, qiov,
                                          qiov_offset);
            qcow2_release_claim(s, f);
        } else if (ret >= 0) {
            /* Returns with the lock held. */
            ret = write_run(bs, (uint64_t)offset, n ? n : (uint64_t)bytes,
                            qiov, qiov_offset, cs, n > 0, false, &n,
                            &next_host);
            co_mutex_unlock(&s->lock);
        } else {
            co_mutex_unlock(&s->lock);
        }
        if (ret < 0) {
            return ret;
        }
        offset += (int64_t)n;
        qiov_offset += n;
        bytes -= (int64_t)n;
    }
    return 0;
}

int coroutine_fn qcow2_co_pwritev(BlockNode *bs, int64_t offset,
                                  int64_t bytes, IOVec *qiov,
                                  size_t qiov_offset, int flags)
{
    (void)flags;
    return do_pwritev(bs, offset, bytes, qiov, qiov_offset, NULL);
}

/*
 * The target side of a copy offload (QEMU's qcow2_co_copy_range_to): the
 * clusters are looked up and allocated as for a write, and the data goes
 * from src (a protocol node: the source side resolved it) into our data
 * file with the protocol driver's copy.  Only plain data: encrypted
 * images, and runs that need copy-on-write around them (a request not
 * covering whole clusters of a new allocation), answer -ENOTSUP and the
 * caller reads and writes instead; clusters allocated for a run that
 * then fails are given back, as for a failed write.
 */
int coroutine_fn qcow2_co_copy_range_to(BlockNode *bs, BlockChild *src,
                                        int64_t src_off, BlockChild *dst,
                                        int64_t dst_off, int64_t bytes,
                                        int read_flags, int write_flags)
{
    Qcow2State *s = bs->opaque;
    BlockNode *sbs = child_node(src), *fbs = child_node(s->data_file);
    (void)dst;

    if (s->corrupt) {
        return -ENOMEDIUM;
    }
    /* Only between two nodes of one protocol driver can the copy work:
     * find that out before clusters are allocated for nothing. */
    if (s->crypto || read_flags || write_flags || !sbs->drv || !fbs->drv ||
        !fbs->drv->co_copy_range_to ||
        sbs->drv->co_copy_range_to != fbs->drv->co_copy_range_to) {
        return -ENOTSUP;
    }
    CopySrc cs = { .src = src, .src_off = src_off, .offset = (uint64_t)dst_off };
    return do_pwritev(bs, dst_off, bytes, NULL, 0, &cs);
}

/*
 * Give the clusters of [offset, offset + bytes) host space without writing
 * the range (QEMU's preallocate_co for a resize): clusters the image owns
 * stay, the others get new clusters, contiguous where possible.  Lock
 * held; *host_end is where the last host cluster ends.
 */
int coroutine_fn qcow2_prealloc_range(BlockNode *bs, uint64_t offset,
                                      uint64_t bytes, uint64_t *host_end)
{
    uint64_t next_host = 0;

    *host_end = 0;
    while (bytes > 0) {
        uint64_t n = 0, host = 0;
        bool meta = false;
        int ret;

        qcow2_wait_inflight(bs, offset, offset + bytes);
        ret = copied_run(bs, offset, bytes, &n, &host, &meta);
        if (ret >= 0 && n > 0 && !meta) {
            next_host = host + n;
        } else if (ret >= 0) {
            ret = write_run(bs, offset, n ? n : bytes, NULL, 0, NULL, n > 0,
                            true, &n, &next_host);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
        if (bytes == 0) {
            /* The host offset just past the range's last byte. */
            uint64_t one = 1, h;
            Qcow2SubclusterType t;
            ret = qcow2_get_host_offset(bs, offset - 1, &one, &h, &t);
            if (ret < 0) {
                return ret;
            }
            *host_end = h + 1;
        }
    }
    return 0;
}

int coroutine_fn qcow2_map_raw_data(BlockNode *bs, uint64_t from, uint64_t to)
{
    Qcow2State *s = bs->opaque;
    uint64_t off = qcow2_start_of_cluster(s, from);

    while (off < to) {
        void *l2;
        unsigned l2i;
        int ret = qcow2_get_l2_for_write(bs, off, &l2, &l2i);
        if (ret < 0) {
            return ret;
        }
        uint64_t n = MIN(s->l2_size - l2i,
                         DIV_ROUND_UP(to - off, s->cluster_size));
        for (uint64_t i = 0; i < n; i++) {
            uint64_t e = qcow2_l2_entry(s, l2, l2i + (unsigned)i);
            /* only clusters with no data yet; a raw data file is mapped
             * onto itself, and its clusters have no refcounts here */
            if (!(e & L2E_OFFSET_MASK) && !(e & QCOW_OFLAG_COMPRESSED)) {
                qcow2_set_l2_entry(s, l2, l2i + (unsigned)i,
                                   (off + i * s->cluster_size) |
                                   QCOW_OFLAG_COPIED);
                qcow2_cache_mark_dirty(s->l2_cache, l2);
            }
        }
        qcow2_cache_put(s->l2_cache, &l2);
        off += n * s->cluster_size;
    }
    return 0;
}

int coroutine_fn qcow2_link_clusters(BlockNode *bs, uint64_t offset,
                                     uint64_t host, uint64_t nb,
                                     bool all_alloc)
{
    Qcow2State *s = bs->opaque;
    uint64_t guest = qcow2_start_of_cluster(s, offset);
    uint64_t head = offset - guest;
    int ret = 0;

    /* The data before offset in the first cluster moves with it. */
    if (head) {
        uint8_t *buf = g_malloc(head);
        IOVec v;
        child_debug_event(bs->file, BLKDBG_COW_READ);
        ret = qcow2_co_read_buf(bs, guest, head, buf, true);
        if (ret >= 0) {
            iovec_init_buf(&v, buf, head);
            child_debug_event(bs->file, BLKDBG_COW_WRITE);
            ret = qcow2_data_pwritev(bs, host, guest, head, &v, 0);
            iovec_destroy(&v);
        }
        g_free(buf);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_mark_dirty(bs);
    while (ret >= 0 && nb > 0) {
        uint64_t old[QCOW2_MAX_RUN];
        unsigned l2i, n;
        void *l2;

        ret = qcow2_get_l2_for_write(bs, guest, &l2, &l2i);
        if (ret < 0) {
            break;
        }
        n = (unsigned)MIN(nb, MIN((uint64_t)QCOW2_MAX_RUN, s->l2_size - l2i));
        for (unsigned i = 0; i < n; i++) {
            old[i] = qcow2_l2_entry(s, l2, l2i + i);
            qcow2_set_l2_entry(s, l2, l2i + i,
                               (host + (uint64_t)i * s->cluster_size) |
                               QCOW_OFLAG_COPIED);
            if (s->extended_l2 && all_alloc) {
                qcow2_set_l2_bitmap(s, l2, l2i + i, QCOW_L2_BITMAP_ALL_ALLOC);
            }
        }
        qcow2_cache_mark_dirty(s->l2_cache, l2);
        qcow2_cache_put(s->l2_cache, &l2);
        ret = qcow2_free_old_entries(bs, old, n, QCOW2_DISCARD_NEVER);
        guest += (uint64_t)n * s->cluster_size;
        host += (uint64_t)n * s->cluster_size;
        nb -= n;
    }
    return ret;
}
