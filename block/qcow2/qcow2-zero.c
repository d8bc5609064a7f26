/*
 * qcow2 zero writes, discards and unallocation: L2 entries change to read
 * as zeroes (or to fall through to the backing file) and the host space
 * they held is freed, after the L2 table is written (the ordering rule at
 * the top of qcow2-write.c).  Edges of a zero write that do not fill a
 * subcluster may have to be written as data, through qcow2_co_pwritev.
 *
 * The guest requests wait for the allocations in flight on their range
 * (qcow2_wait_inflight) first, since what frees clusters must not race
 * their data; the lock-held calls for resize and emptying the image rely
 * on their callers having waited for all of them.
 */
#include <errno.h>

#include "qcow2-write-int.h"

/* New entry and bitmap for a cluster whose subclusters [a, b) read zero. */
static void zero_entry(const Qcow2State *s, bool backing, uint64_t e,
                       uint64_t bm, unsigned a, unsigned b, bool unmap,
                       uint64_t *ne, uint64_t *nbm)
{
    bool whole = a == 0 && b == s->subclusters_per_cluster;

    if (e & QCOW_OFLAG_COMPRESSED) {
        unmap = true;    /* a compressed cluster cannot keep its space */
    }
    (void)backing;
    if (!s->extended_l2) {
        *ne = (unmap ? 0 : (e & ~QCOW_OFLAG_COMPRESSED)) | QCOW_OFLAG_ZERO;
        *nbm = 0;
        return;
    }
    if (whole && (unmap || !(e & L2E_OFFSET_MASK))) {
        *ne = 0;
        *nbm = QCOW_L2_BITMAP_ALL_ZEROES;
        return;
    }
    uint64_t range = ((1ull << b) - 1) & ~((1ull << a) - 1);
    *ne = e;
    *nbm = (bm | (range << 32)) & ~range;
}

/*
 * zero: make the range read as zeroes; else discard it.  full: the range
 * goes away entirely (shrinking): entries become 0 whatever lies below.
 */
static int coroutine_fn zero_or_discard(BlockNode *bs, uint64_t offset,
                                        uint64_t bytes, bool zero, bool unmap,
                                        bool full, Qcow2DiscardType dt)
{
    Qcow2State *s = bs->opaque;
    int ret = 0;

    /* The freed clusters of the whole range go to the file in runs. */
    qcow2_discard_batch_begin(bs);
    while (bytes > 0 && ret >= 0) {
        unsigned l2i;
        void *l2;
        uint64_t old[QCOW2_MAX_RUN];
        unsigned nfree = 0;

        /* Dropping what has no L2 table needs no table (shrink, empty). */
        unsigned l1i = qcow2_l1_index(s, offset);
        if (full && (l1i >= s->l1_size ||
                     !(s->l1_table[l1i] & L1E_OFFSET_MASK))) {
            uint64_t span = 1ull << (s->l2_bits + s->cluster_bits);
            uint64_t n = MIN(bytes, span - (offset & (span - 1)));
            offset += n;
            bytes -= n;
            continue;
        }
        ret = qcow2_get_l2_for_write(bs, offset, &l2, &l2i);
        if (ret < 0) {
            break;
        }
        while (bytes > 0 && l2i < s->l2_size && nfree < QCOW2_MAX_RUN) {
            uint64_t in = qcow2_offset_into_cluster(s, offset);
            uint64_t n = MIN(bytes, s->cluster_size - in);
            unsigned a = (unsigned)(in >> s->subcluster_bits);
            unsigned b = (unsigned)((in + n + s->subcluster_size - 1) >>
                                    s->subcluster_bits);
            uint64_t e = qcow2_l2_entry(s, l2, l2i);
            uint64_t bm = qcow2_l2_bitmap(s, l2, l2i);
            uint64_t ne, nbm;

            if (zero) {
                zero_entry(s, bs->backing != NULL, e, bm, a, b, unmap, &ne,
                           &nbm);
            } else {
                /*
                 * Discard: read back as zeroes where there was host space
                 * or a backing file; an unallocated cluster without one
                 * already reads as zeroes and stays as it is (QEMU 7.2).
                 */
                bool allocated = (e & (L2E_OFFSET_MASK |
                                       QCOW_OFLAG_COMPRESSED)) ||
                                 (qcow2_has_data_file(s) &&
                                  (e & QCOW_OFLAG_COPIED));
                if (!full && !bs->backing && !allocated) {
                    ne = e;
                    nbm = bm;
                } else if (!full) {
                    if (s->extended_l2) {
                        ne = 0;
                        nbm = QCOW_L2_BITMAP_ALL_ZEROES;
                    } else {
                        ne = s->version >= 3 ? QCOW_OFLAG_ZERO : 0;
                        nbm = 0;
                    }
                } else {
                    ne = nbm = 0;
                }
            }
            if (ne != e || nbm != bm) {
                qcow2_set_l2_entry(s, l2, l2i, ne);
                if (s->extended_l2) {
                    qcow2_set_l2_bitmap(s, l2, l2i, nbm);
                }
                qcow2_cache_mark_dirty(s->l2_cache, l2);
                /* The host space goes when the entry no longer holds it. */
                uint64_t keep = ne & L2E_OFFSET_MASK;
                if ((e & QCOW_OFLAG_COMPRESSED) ||
                    ((e & L2E_OFFSET_MASK) && !keep)) {
                    old[nfree++] = e;
                }
            }
            offset += n;
            bytes -= n;
            l2i++;
        }
        qcow2_cache_put(s->l2_cache, &l2);
        ret = qcow2_free_old_entries(bs, old, nfree, dt);
    }
    qcow2_discard_batch_end(bs, ret);
    return ret;
}

/*
 * Does [offset, offset + bytes) read as zeroes, as far as the metadata
 * tells without reading data?  Lock held.  (QEMU's is_zero(): unallocated
 * without a backing file, zero clusters, or a backing file that says so.)
 */
int coroutine_fn qcow2_is_zero(BlockNode *bs, uint64_t offset,
                               uint64_t bytes)
{
    while (bytes > 0) {
        uint64_t n = bytes, host;
        Qcow2SubclusterType t;
        int ret = qcow2_get_host_offset(bs, offset, &n, &host, &t);

        if (ret < 0) {
            return ret;
        }
        if (t == QCOW2_SC_UNALLOC_PLAIN || t == QCOW2_SC_UNALLOC_ALLOC) {
            if (bs->backing) {
                int64_t blen = node_getlength(bs->backing->bs), pnum;
                if (blen < 0) {
                    return (int)blen;
                }
                if ((int64_t)offset < blen) {
                    n = MIN(n, (uint64_t)blen - offset);
                    ret = node_co_block_status(bs->backing->bs, false,
                                               (int64_t)offset, (int64_t)n,
                                               &pnum, NULL, NULL);
                    if (ret < 0) {
                        return ret;
                    }
                    if (!(ret & BLOCK_ZERO)) {
                        return 0;
                    }
                    n = (uint64_t)pnum;
                }
            }
        } else if (t != QCOW2_SC_ZERO_PLAIN && t != QCOW2_SC_ZERO_ALLOC) {
            return 0;
        }
        offset += n;
        bytes -= n;
    }
    return 1;
}

static int coroutine_fn write_zero_data(BlockNode *bs, uint64_t offset,
                                        uint64_t bytes)
{
    void *buf = g_malloc0(bytes);
    IOVec q;
    int ret;

    iovec_init_buf(&q, buf, bytes);
    ret = qcow2_co_pwritev(bs, (int64_t)offset, (int64_t)bytes, &q, 0, 0);
    iovec_destroy(&q);
    g_free(buf);
    return ret;
}

/*
 * A partial subcluster at the edge of a zero write: if the rest of the
 * subcluster reads as zeroes already, the whole subcluster becomes a zero
 * subcluster (as QEMU does); otherwise the zeroes are written as data.
 */
static int coroutine_fn zero_edge(BlockNode *bs, uint64_t offset,
                                  uint64_t bytes, int flags)
{
    Qcow2State *s = bs->opaque;
    uint64_t start = ROUND_DOWN(offset, s->subcluster_size);
    uint64_t end = MIN(start + s->subcluster_size, s->size);
    int ret;

    co_mutex_lock(&s->lock);
    qcow2_wait_inflight(bs, start, end);
    ret = qcow2_is_zero(bs, start, offset - start);
    if (ret > 0) {
        ret = qcow2_is_zero(bs, offset + bytes, end - (offset + bytes));
    }
    if (ret > 0) {
        uint64_t n = end - start, host;
        Qcow2SubclusterType t;
        ret = qcow2_get_host_offset(bs, start, &n, &host, &t);
        if (ret >= 0 && t != QCOW2_SC_NORMAL && t != QCOW2_SC_COMPRESSED) {
            ret = zero_or_discard(bs, start, end - start, s->version >= 3,
                                  flags & REQ_MAY_UNMAP, false,
                                  QCOW2_DISCARD_REQUEST);
            co_mutex_unlock(&s->lock);
            return ret;
        }
    }
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    return write_zero_data(bs, offset, bytes);
}

int coroutine_fn qcow2_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                        int64_t bytes, int flags)
{
    Qcow2State *s = bs->opaque;
    uint64_t off = (uint64_t)offset, end = (uint64_t)(offset + bytes);
    int ret = 0;

    /*
     * A raw data file must hold the zeroes itself.  v2 has no zero flag:
     * without a backing file a discard reads back as zeroes (QEMU does the
     * same); with one, zeroes must be written as data.
     */
    if (qcow2_data_file_is_raw(s) || (s->version < 3 && bs->backing)) {
        return -ENOTSUP;
    }
    if (s->corrupt) {
        return -ENOMEDIUM;
    }

    /* The head and tail pieces that do not fill a subcluster. */
    uint64_t head_end = MIN(end, ROUND_UP(off, s->subcluster_size));
    if (off < head_end && (qcow2_offset_into_subcluster(s, off) ||
                           (head_end < s->size &&
                            qcow2_offset_into_subcluster(s, head_end)))) {
        ret = zero_edge(bs, off, head_end - off, flags);
        off = head_end;
    }
    uint64_t tail_start = MAX(off, ROUND_DOWN(end, s->subcluster_size));
    if (ret >= 0 && tail_start < end && end != s->size) {
        ret = zero_edge(bs, tail_start, end - tail_start, flags);
        end = tail_start;
    }
    if (ret >= 0 && off < end && s->extended_l2) {
        /*
         * A compressed cluster cannot hold zero subclusters: if the range
         * covers one only partly, zeroes are written as data (QEMU too).
         */
        uint64_t edges[2] = { off, end - 1 };
        co_mutex_lock(&s->lock);
        for (int k = 0; k < 2 && ret >= 0; k++) {
            uint64_t cs = qcow2_start_of_cluster(s, edges[k]);
            uint64_t n = s->cluster_size, host;
            Qcow2SubclusterType t;
            if (cs >= off && cs + s->cluster_size <= end) {
                continue;
            }
            ret = qcow2_get_host_offset(bs, cs, &n, &host, &t);
            if (ret >= 0 && t == QCOW2_SC_COMPRESSED) {
                ret = -ENOTSUP;
            }
        }
        co_mutex_unlock(&s->lock);
    }
    if (ret >= 0 && off < end) {
        co_mutex_lock(&s->lock);
        qcow2_wait_inflight(bs, off, end);
        ret = zero_or_discard(bs, off, end - off, s->version >= 3,
                              flags & REQ_MAY_UNMAP, false,
                              QCOW2_DISCARD_REQUEST);
        co_mutex_unlock(&s->lock);
    }
    return ret;
}

/*
 * What discards and unallocation share: the range's whole clusters go,
 * once no allocation is in flight on them; full as for zero_or_discard.
 */
static int coroutine_fn discard_clusters(BlockNode *bs, int64_t offset,
                                         uint64_t end, bool full)
{
    Qcow2State *s = bs->opaque;
    uint64_t start = ROUND_UP((uint64_t)offset, s->cluster_size);
    int ret;

    /* Whole clusters only; the image's last cluster may be partial. */
    if (end != s->size) {
        end = ROUND_DOWN(end, s->cluster_size);
    }
    if (end <= start) {
        return 0;
    }
    co_mutex_lock(&s->lock);
    qcow2_wait_inflight(bs, start, end);
    ret = zero_or_discard(bs, start, end - start, false, true, full,
                          QCOW2_DISCARD_REQUEST);
    co_mutex_unlock(&s->lock);
    return ret;
}

int coroutine_fn qcow2_co_pdiscard(BlockNode *bs, int64_t offset,
                                   int64_t bytes)
{
    Qcow2State *s = bs->opaque;

    if (s->corrupt) {
        return -ENOMEDIUM;
    }
    /*
     * A v2 image cannot make a cluster read as zeroes over a backing file;
     * QEMU 7.2 then keeps the data, and so do we (discard is advisory).
     */
    if (s->version < 3 && bs->backing) {
        return 0;
    }
    return discard_clusters(bs, offset, (uint64_t)(offset + bytes), false);
}

/*
 * The range falls through to the backing file: the L2 entries of its whole
 * clusters are cleared and the clusters freed, as make_empty does (a full
 * discard), whatever the version and the backing file.  Edges that cover
 * part of a cluster keep their data.
 */
int coroutine_fn qcow2_co_unallocate(BlockNode *bs, int64_t offset,
                                     int64_t bytes)
{
    Qcow2State *s = bs->opaque;

    if (s->corrupt) {
        return -ENOMEDIUM;
    }
    return discard_clusters(bs, offset,
                            MIN((uint64_t)(offset + bytes), s->size), true);
}

int coroutine_fn qcow2_discard_range(BlockNode *bs, uint64_t offset,
                                     uint64_t bytes, Qcow2DiscardType dt)
{
    return zero_or_discard(bs, offset, bytes, false, true, true, dt);
}

int coroutine_fn qcow2_zero_new_area(BlockNode *bs, uint64_t from, uint64_t to)
{
    Qcow2State *s = bs->opaque;
    uint64_t aligned = MIN(ROUND_UP(from, s->subcluster_size), to);
    int ret = 0;

    /* Zero subclusters where the format has them, data elsewhere. */
    if (s->version >= 3 && !qcow2_data_file_is_raw(s) && aligned < to) {
        ret = zero_or_discard(bs, aligned, to - aligned, true, false, false,
                              QCOW2_DISCARD_NEVER);
        to = aligned;
    }
    if (ret >= 0 && from < to) {
        co_mutex_unlock(&s->lock);
        ret = write_zero_data(bs, from, to - from);
        co_mutex_lock(&s->lock);
    }
    return ret;
}
