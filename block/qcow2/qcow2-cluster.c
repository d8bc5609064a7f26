/*
 * Guest to host mapping: L1 and L2 lookups, and what an L2 entry means.
 *
 * Every host offset read from an L1 or L2 table is checked before use: an
 * unaligned one means the image is damaged, which is reported (and makes
 * the image corrupt for writers) rather than followed.
 */
#include <errno.h>
#include <inttypes.h>

#include "qcow2.h"

/* The cluster-level meaning of an L2 entry, before subclusters. */
typedef enum {
    CL_UNALLOCATED,
    CL_ZERO_PLAIN,
    CL_ZERO_ALLOC,
    CL_NORMAL,
    CL_COMPRESSED,
} ClusterType;

static ClusterType cluster_type(const Qcow2State *s, uint64_t entry)
{
    if (entry & QCOW_OFLAG_COMPRESSED) {
        return CL_COMPRESSED;
    }
    if ((entry & QCOW_OFLAG_ZERO) && !s->extended_l2) {
        return (entry & L2E_OFFSET_MASK) ? CL_ZERO_ALLOC : CL_ZERO_PLAIN;
    }
    if (!(entry & L2E_OFFSET_MASK)) {
        /*
         * Offset 0 is valid in an external data file; such clusters always
         * have refcount 1, so the copied flag tells them apart.
         */
        if (qcow2_has_data_file(s) && (entry & QCOW_OFLAG_COPIED)) {
            return CL_NORMAL;
        }
        return CL_UNALLOCATED;
    }
    return CL_NORMAL;
}

Qcow2SubclusterType qcow2_subcluster_type(const Qcow2State *s, uint64_t entry,
                                          uint64_t bitmap, unsigned sc)
{
    ClusterType t = cluster_type(s, entry);

    if (!s->extended_l2) {
        switch (t) {
        case CL_COMPRESSED: return QCOW2_SC_COMPRESSED;
        case CL_ZERO_PLAIN: return QCOW2_SC_ZERO_PLAIN;
        case CL_ZERO_ALLOC: return QCOW2_SC_ZERO_ALLOC;
        case CL_NORMAL: return QCOW2_SC_NORMAL;
        case CL_UNALLOCATED: return QCOW2_SC_UNALLOC_PLAIN;
        }
        return QCOW2_SC_INVALID;
    }
    switch (t) {
    case CL_COMPRESSED:
        return QCOW2_SC_COMPRESSED;
    case CL_NORMAL:
        if ((bitmap >> 32) & bitmap) {
            return QCOW2_SC_INVALID;   /* both allocated and zero */
        }
        if (bitmap & (1ull << (32 + sc))) {
            return QCOW2_SC_ZERO_ALLOC;
        }
        if (bitmap & (1ull << sc)) {
            return QCOW2_SC_NORMAL;
        }
        return QCOW2_SC_UNALLOC_ALLOC;
    case CL_UNALLOCATED:
        if (bitmap & QCOW_L2_BITMAP_ALL_ALLOC) {
            return QCOW2_SC_INVALID;   /* data without a host cluster */
        }
        if (bitmap & (1ull << (32 + sc))) {
            return QCOW2_SC_ZERO_PLAIN;
        }
        return QCOW2_SC_UNALLOC_PLAIN;
    default:
        return QCOW2_SC_INVALID;
    }
}

/* Does subcluster type b continue a run of type a (same answer)? */
static bool same_kind(Qcow2SubclusterType a, Qcow2SubclusterType b)
{
    return a == b;
}

int coroutine_fn qcow2_get_l2_table(BlockNode *bs, uint64_t offset,
                                    void **l2, unsigned *l2_index)
{
    Qcow2State *s = bs->opaque;
    unsigned l1i = qcow2_l1_index(s, offset);
    uint64_t l2_offset;

    *l2 = NULL;
    if (l1i >= s->l1_size) {
        return 0;
    }
    l2_offset = s->l1_table[l1i] & L1E_OFFSET_MASK;
    if (!l2_offset) {
        return 0;
    }
    if (qcow2_offset_into_cluster(s, l2_offset)) {
        qcow2_signal_corruption(bs, true, -1, -1, "L2 table offset %#" PRIx64
                                " unaligned (L1 index: %#x)", l2_offset, l1i);
        return -EIO;
    }
    *l2_index = qcow2_l2_index(s, offset);
    return qcow2_cache_get(s->l2_cache, l2_offset, l2);
}

int coroutine_fn qcow2_get_host_offset(BlockNode *bs, uint64_t offset,
                                       uint64_t *bytes, uint64_t *host_offset,
                                       Qcow2SubclusterType *type)
{
    Qcow2State *s = bs->opaque;
    uint64_t in_cluster = qcow2_offset_into_cluster(s, offset);
    unsigned sc = (unsigned)(in_cluster >> s->subcluster_bits);
    /* Never look past the L2 table that covers offset. */
    uint64_t l2_end = ((offset >> (s->l2_bits + s->cluster_bits)) + 1)
                      << (s->l2_bits + s->cluster_bits);
    uint64_t want = MIN(*bytes, l2_end - offset);
    unsigned l2i;
    void *l2;
    int ret;

    *host_offset = 0;
    ret = qcow2_get_l2_table(bs, offset, &l2, &l2i);
    if (ret < 0) {
        return ret;
    }
    if (!l2) {
        *type = QCOW2_SC_UNALLOC_PLAIN;
        *bytes = want;
        return 0;
    }

    uint64_t entry = qcow2_l2_entry(s, l2, l2i);
    uint64_t bitmap = qcow2_l2_bitmap(s, l2, l2i);
    Qcow2SubclusterType t = qcow2_subcluster_type(s, entry, bitmap, sc);

    if (t == QCOW2_SC_INVALID) {
        qcow2_signal_corruption(bs, true, -1, -1, "Invalid cluster entry "
                                "found  (L2 offset: %#" PRIx64 ", L2 index: "
                                "%#x)", s->l1_table[qcow2_l1_index(s, offset)]
                                & L1E_OFFSET_MASK, l2i);
        ret = -EIO;
        goto out;
    }
    if (t == QCOW2_SC_COMPRESSED) {
        *host_offset = entry & ~(QCOW_OFLAG_COPIED | QCOW_OFLAG_COMPRESSED);
        *bytes = MIN(want, s->cluster_size - in_cluster);
        *type = t;
        goto out;
    }

    uint64_t host_cluster = entry & L2E_OFFSET_MASK;
    if ((t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC ||
         t == QCOW2_SC_UNALLOC_ALLOC) &&
        qcow2_offset_into_cluster(s, host_cluster)) {
        qcow2_signal_corruption(bs, true, -1, -1, "Cluster allocation offset "
                                "%#" PRIx64 " unaligned (L2 offset: %#" PRIx64
                                ", L2 index: %#x)", host_cluster,
                                s->l1_table[qcow2_l1_index(s, offset)] &
                                L1E_OFFSET_MASK, l2i);
        ret = -EIO;
        goto out;
    }
    if (t == QCOW2_SC_NORMAL && qcow2_has_data_file(s) &&
        qcow2_data_file_is_raw(s) &&
        host_cluster != qcow2_start_of_cluster(s, offset)) {
        qcow2_signal_corruption(bs, true, -1, -1, "External data file host "
                                "cluster offset %#" PRIx64 " does not match "
                                "guest cluster offset: %#" PRIx64,
                                host_cluster,
                                qcow2_start_of_cluster(s, offset));
        ret = -EIO;
        goto out;
    }

    /*
     * Extend the run over following subclusters and clusters with the same
     * answer; for data, only while the host clusters are contiguous too.
     */
    uint64_t n = s->subcluster_size - qcow2_offset_into_subcluster(s, offset);
    uint64_t expect_host = host_cluster;
    unsigned i = l2i, j = sc + 1;
    uint64_t e = entry, bm = bitmap;

    while (n < want) {
        if (j == s->subclusters_per_cluster) {
            j = 0;
            i++;
            if (i >= s->l2_size) {
                break;
            }
            e = qcow2_l2_entry(s, l2, i);
            bm = qcow2_l2_bitmap(s, l2, i);
            expect_host += s->cluster_size;
            if ((t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC ||
                 t == QCOW2_SC_UNALLOC_ALLOC) &&
                (e & L2E_OFFSET_MASK) != expect_host) {
                break;
            }
        }
        if (!same_kind(t, qcow2_subcluster_type(s, e, bm, j))) {
            break;
        }
        n += s->subcluster_size;
        j++;
    }
    *bytes = MIN(n, want);
    *type = t;
    if (t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC ||
        t == QCOW2_SC_UNALLOC_ALLOC) {
        *host_offset = host_cluster + in_cluster;
    }
out:
    qcow2_cache_put(s->l2_cache, &l2);
    return ret;
}

int coroutine_fn qcow2_grow_l1(BlockNode *bs, uint32_t min_size)
{
    Qcow2State *s = bs->opaque;
    uint64_t bytes, new_offset;
    uint64_t *t;
    int ret;

    if (min_size <= s->l1_size) {
        return 0;
    }
    if ((uint64_t)min_size * 8 > QCOW2_MAX_L1_BYTES) {
        return -EFBIG;
    }
    child_debug_event(bs->file, BLKDBG_L1_GROW_ALLOC_TABLE);
    bytes = ROUND_UP((uint64_t)min_size * 8, s->cluster_size);
    ret = qcow2_alloc_clusters(bs, bytes >> s->cluster_bits, &new_offset);
    if (ret < 0) {
        return ret;
    }
    t = g_try_malloc0(bytes);
    if (!t) {
        qcow2_free_clusters(bs, new_offset, bytes, QCOW2_DISCARD_NEVER);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        t[i] = htobe64(s->l1_table[i]);
    }
    /* Refcounts of the new table first, then the table, then the header. */
    ret = qcow2_cache_flush(s->refcount_cache);
    if (ret >= 0) {
        /*
         * Only the entries: the rest of the last cluster stays unwritten
         * (a hole, or past the end of the file), as QEMU leaves it.
         */
        child_debug_event(bs->file, BLKDBG_L1_GROW_WRITE_TABLE);
        ret = child_co_pwrite(bs->file, (int64_t)new_offset,
                              (int64_t)min_size * 8, t, 0);
    }
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    if (ret >= 0) {
        struct __attribute__((packed)) {
            uint32_t size;
            uint64_t offset;
        } h = { htobe32(min_size), htobe64(new_offset) };
        child_debug_event(bs->file, BLKDBG_L1_GROW_ACTIVATE_TABLE);
        ret = child_co_pwrite(bs->file, offsetof(Qcow2DiskHeader, l1_size),
                              sizeof(h), &h, 0);
    }
    if (ret >= 0) {
        /* The header points at the new table before the old one is freed. */
        ret = node_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        g_free(t);
        qcow2_free_clusters(bs, new_offset, bytes, QCOW2_DISCARD_NEVER);
        return ret;
    }
    for (uint32_t i = 0; i < min_size; i++) {
        t[i] = be64toh(t[i]);
    }
    uint64_t old_offset = s->l1_table_offset;
    uint64_t old_bytes = ROUND_UP((uint64_t)s->l1_size * 8, s->cluster_size);
    g_free(s->l1_table);
    s->l1_table = t;
    s->l1_alloc = (uint32_t)(bytes / 8);
    s->l1_size = min_size;
    s->l1_table_offset = new_offset;
    if (old_bytes) {
        qcow2_free_clusters(bs, old_offset, old_bytes, QCOW2_DISCARD_OTHER);
    }
    return 0;
}
