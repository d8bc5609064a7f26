/*
 * Metadata transactions: build a second, complete view of the image's
 * metadata beside the current one and switch to it with one header write.
 *
 * Why: `qemu-img check` requires, for every L1 and L2 entry the active
 * L1 table reaches, that the COPIED flag be set exactly when the cluster's
 * refcount is 1.  A snapshot operation moves many clusters between
 * refcount 1 and 2; the flag lives in an L2 (or L1) table and the refcount
 * in a refcount block, so whichever of the two writes comes first, a crash
 * between them leaves a mismatch that check counts as a corruption.  No
 * ordering of in-place updates avoids that (QEMU's does not either).
 *
 * So nothing the current view uses is written in place.  Every refcount
 * block that changes is copied (with its changes) to a cluster that is free
 * in the current view, the refcount table likewise, and the caller does
 * the same for the L1 tables, L2 tables and snapshot table it changes.
 * Once all of that is on disk (flushed), one write of header bytes 24..71
 * (size, L1 size and offset, refcount table offset and size, snapshot count
 * and offset: one sector) switches from the old view to the new one.
 *
 * A crash before that write leaves the old view, untouched and consistent;
 * the clusters written so far are free in it (refcount 0), so not even a
 * leak.  A crash after it leaves the new view, consistent as well; the old
 * view's clusters are free in it.  Freed clusters are discarded only after
 * the switch.
 *
 * The new refcounts are the old ones plus the deltas the caller adds.
 * New clusters must be free in both views (refcount 0 in the old one and
 * not yet taken here).  Placing the copied refcount blocks and the table
 * changes refcounts again, possibly in blocks not copied yet, so placement
 * repeats until nothing new needs a place.
 *
 * A second transaction can put the refcount structures back where an
 * earlier view had them (qcow2_txn_restore_refcounts): snapshot operations
 * use it to end with QEMU's layout (see relayout() in qcow2-snapshot.c).
 * Those places must be free in the current view; every check that they
 * are is made before the first write, so a transaction that cannot do it
 * fails with -ENOTSUP having changed nothing.
 *
 * The caller holds s->lock, has waited for allocating writes and has
 * written both caches back (the old view is on disk as in memory).
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"

typedef struct TxnBlock {
    uint64_t index;          /* refcount table index */
    uint8_t *buf;            /* the new contents, one cluster */
    uint64_t old_offset;     /* 0 if the block did not exist */
    uint64_t new_offset;     /* 0 until placed */
    bool dropped;            /* restoring: a block the earlier view lacked */
} TxnBlock;

typedef struct TxnWrite {
    uint64_t offset;
    void *buf;
    uint64_t len;
    int ign;                 /* overlap checks this write may skip */
} TxnWrite;

struct Qcow2MetaTxn {
    BlockNode *bs;
    GHashTable *blocks;      /* index -> TxnBlock */
    GArray *writes;          /* TxnWrite */
    GArray *freed;           /* clusters whose refcount fell to 0 */
    uint64_t cursor;         /* where the search for free clusters goes on */
    bool hold_discards;      /* freed clusters are discarded by a later txn */
    /*
     * Set for a transaction that puts the refcount structures back where
     * an earlier view had them: block i goes to fixed_rt[i], the table to
     * fixed_rt_offset (fixed_rt_clusters long).
     */
    uint64_t *fixed_rt;
    uint64_t fixed_rt_size;
    uint64_t fixed_rt_offset;
    uint64_t fixed_rt_clusters;
};

static void free_block(gpointer p)
{
    TxnBlock *b = p;
    g_free(b->buf);
    g_free(b);
}

Qcow2MetaTxn *qcow2_txn_new(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    Qcow2MetaTxn *t = g_new0(Qcow2MetaTxn, 1);

    t->bs = bs;
    t->blocks = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL,
                                      free_block);
    t->writes = g_array_new(false, false, sizeof(TxnWrite));
    t->freed = g_array_new(false, false, sizeof(uint64_t));
    t->cursor = s->free_cluster_index;
    return t;
}

void qcow2_txn_free(Qcow2MetaTxn *t)
{
    if (!t) {
        return;
    }
    for (guint i = 0; i < t->writes->len; i++) {
        g_free(g_array_index(t->writes, TxnWrite, i).buf);
    }
    g_array_free(t->writes, true);
    g_array_free(t->freed, true);
    g_hash_table_destroy(t->blocks);
    g_free(t->fixed_rt);
    g_free(t);
}

/* The copy of refcount block `index`, made on first use. */
static int coroutine_fn get_block(Qcow2MetaTxn *t, uint64_t index,
                                  TxnBlock **out)
{
    BlockNode *bs = t->bs;
    Qcow2State *s = bs->opaque;
    TxnBlock *b = g_hash_table_lookup(t->blocks, &index);

    if (!b) {
        if (index >= (QCOW2_MAX_REFTABLE_BYTES / 8)) {
            return -EFBIG;
        }
        b = g_new0(TxnBlock, 1);
        b->index = index;
        b->buf = g_malloc0(s->cluster_size);
        if (index < s->refcount_table_size) {
            b->old_offset = s->refcount_table[index] & REFT_OFFSET_MASK;
        }
        if (b->old_offset) {
            void *rb;
            int ret;

            /* A block copied to change its refcounts: QEMU's update. */
            child_debug_event(bs->file, BLKDBG_REFBLOCK_LOAD);
            ret = qcow2_cache_get(s->refcount_cache, b->old_offset, &rb);
            if (ret < 0) {
                free_block(b);
                return ret;
            }
            memcpy(b->buf, rb, s->cluster_size);
            qcow2_cache_put(s->refcount_cache, &rb);
        }
        g_hash_table_insert(t->blocks, &b->index, b);
    }
    *out = b;
    return 0;
}

int coroutine_fn qcow2_txn_get_refcount(Qcow2MetaTxn *t, uint64_t cluster,
                                        uint64_t *rc)
{
    Qcow2State *s = t->bs->opaque;
    uint64_t index = cluster >> s->refcount_block_bits;
    TxnBlock *b = g_hash_table_lookup(t->blocks, &index);

    if (b) {
        *rc = qcow2_refcount_array_get(s, b->buf, cluster & (s->refcount_block_size - 1));
        return 0;
    }
    return qcow2_get_refcount(t->bs, cluster, rc);
}

int coroutine_fn qcow2_txn_add(Qcow2MetaTxn *t, uint64_t cluster, int delta)
{
    BlockNode *bs = t->bs;
    Qcow2State *s = bs->opaque;
    TxnBlock *b;
    uint64_t rc;
    int ret;

    if (delta == 0) {
        return 0;
    }
    ret = get_block(t, cluster >> s->refcount_block_bits, &b);
    if (ret < 0) {
        return ret;
    }
    uint64_t i = cluster & (s->refcount_block_size - 1);
    rc = qcow2_refcount_array_get(s, b->buf, i);
    if (delta < 0 && rc < (uint64_t)-delta) {
        qcow2_signal_corruption(bs, true, -1, -1, "Cannot decrease refcount "
                                "of cluster %#" PRIx64 " below 0",
                                cluster << s->cluster_bits);
        return -EIO;
    }
    if (delta > 0 && s->refcount_max - rc < (uint64_t)delta) {
        /* QEMU reports a refcount overflow as EINVAL; scripts see the errno. */
        return -EINVAL;
    }
    rc += (uint64_t)(int64_t)delta;
    qcow2_refcount_array_set(s, b->buf, i, rc);
    if (rc == 0) {
        g_array_append_val(t->freed, cluster);
    }
    return 0;
}

int coroutine_fn qcow2_txn_free_range(Qcow2MetaTxn *t, uint64_t offset,
                                      uint64_t bytes)
{
    Qcow2State *s = t->bs->opaque;

    if (!bytes) {
        return 0;
    }
    for (uint64_t c = offset >> s->cluster_bits;
         c <= (offset + bytes - 1) >> s->cluster_bits; c++) {
        int ret = qcow2_txn_add(t, c, -1);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* Free in the old view and not taken by this transaction. */
static int coroutine_fn cluster_free(Qcow2MetaTxn *t, uint64_t c, bool *free)
{
    uint64_t rc;
    int ret = qcow2_get_refcount(t->bs, c, &rc);

    if (ret >= 0 && rc == 0) {
        ret = qcow2_txn_get_refcount(t, c, &rc);
    }
    *free = ret >= 0 && rc == 0;
    return ret;
}

int coroutine_fn qcow2_txn_take(Qcow2MetaTxn *t, uint64_t cluster, int rc)
{
    bool free;
    int ret = cluster_free(t, cluster, &free);

    if (ret < 0) {
        return ret;
    }
    return free ? qcow2_txn_add(t, cluster, rc) : -ENOTSUP;
}

int coroutine_fn qcow2_txn_touch(Qcow2MetaTxn *t, uint64_t cluster)
{
    Qcow2State *s = t->bs->opaque;
    TxnBlock *b;

    return get_block(t, cluster >> s->refcount_block_bits, &b);
}

void qcow2_txn_set_floor(Qcow2MetaTxn *t, uint64_t cluster)
{
    t->cursor = MAX(t->cursor, cluster);
}

void qcow2_txn_hold_discards(Qcow2MetaTxn *t)
{
    t->hold_discards = true;
}

void qcow2_txn_inherit_freed(Qcow2MetaTxn *t, Qcow2MetaTxn *from)
{
    g_array_append_vals(t->freed, from->freed->data, from->freed->len);
}

void qcow2_txn_restore_refcounts(Qcow2MetaTxn *t, const uint64_t *rt,
                                 uint64_t rt_size, uint64_t rt_offset)
{
    Qcow2State *s = t->bs->opaque;

    t->fixed_rt = g_memdup2(rt, (size_t)MAX(rt_size, 1) * 8);
    t->fixed_rt_size = rt_size;
    t->fixed_rt_offset = rt_offset;
    t->fixed_rt_clusters = qcow2_size_to_clusters(s, rt_size * 8);
}

int coroutine_fn qcow2_txn_alloc(Qcow2MetaTxn *t, uint64_t n,
                                 uint64_t *offset)
{
    Qcow2State *s = t->bs->opaque;
    uint64_t start = t->cursor, run = 0;

    for (uint64_t c = t->cursor; run < n; c++) {
        bool free;
        int ret;

        if (c >= (1ull << (56 - s->cluster_bits))) {
            return -EFBIG;
        }
        ret = cluster_free(t, c, &free);
        if (ret < 0) {
            return ret;
        }
        if (free) {
            if (run == 0) {
                start = c;
            }
            run++;
        } else {
            run = 0;
        }
    }
    for (uint64_t c = start; c < start + n; c++) {
        int ret = qcow2_txn_add(t, c, 1);
        if (ret < 0) {
            return ret;
        }
    }
    if (n == 1 || start == t->cursor) {
        t->cursor = start + n;
    }
    *offset = start << s->cluster_bits;
    return 0;
}

void qcow2_txn_queue_write(Qcow2MetaTxn *t, uint64_t offset, void *buf,
                           uint64_t len)
{
    qcow2_txn_queue_write_ign(t, offset, buf, len, 0);
}

void qcow2_txn_queue_write_ign(Qcow2MetaTxn *t, uint64_t offset, void *buf,
                               uint64_t len, int ign)
{
    TxnWrite w = { offset, buf, len, ign };
    g_array_append_val(t->writes, w);
}

static int cmp_u64(gconstpointer a, gconstpointer b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * Give every copied refcount block, and the new refcount table, a cluster.
 * Each placement changes refcounts (and may copy more blocks), so go on
 * until a round places nothing.
 */
static int coroutine_fn place_refcounts(Qcow2MetaTxn *t, uint64_t *rt_offset,
                                        uint64_t *rt_clusters)
{
    Qcow2State *s = t->bs->opaque;
    uint64_t old_rt_clusters = qcow2_size_to_clusters(
        s, (uint64_t)s->refcount_table_size * 8);
    int ret;

    /* The old table goes: the new view has its own. */
    ret = qcow2_txn_free_range(t, s->refcount_table_offset,
                               old_rt_clusters << s->cluster_bits);
    if (ret < 0) {
        return ret;
    }
    *rt_offset = 0;
    *rt_clusters = 0;
    for (uint64_t i = 0; t->fixed_rt && i < s->refcount_table_size; i++) {
        /* Every block not at its earlier place goes back there. */
        uint64_t want = i < t->fixed_rt_size ? t->fixed_rt[i] : 0;
        if ((s->refcount_table[i] ^ want) & REFT_OFFSET_MASK) {
            TxnBlock *b;
            ret = get_block(t, i, &b);
            if (ret < 0) {
                return ret;
            }
        }
    }
    for (;;) {
        bool placed = false;
        guint n;
        uint64_t *keys = NULL, max_index = 0;
        GHashTableIter it;
        gpointer v;

        /* Sorted, so that the layout does not depend on hashing. */
        n = g_hash_table_size(t->blocks);
        keys = g_new(uint64_t, MAX(n, 1));
        n = 0;
        g_hash_table_iter_init(&it, t->blocks);
        while (g_hash_table_iter_next(&it, NULL, &v)) {
            keys[n++] = ((TxnBlock *)v)->index;
        }
        qsort(keys, n, sizeof(*keys), cmp_u64);
        for (guint i = 0; i < n; i++) {
            TxnBlock *b = g_hash_table_lookup(t->blocks, &keys[i]);
            if (b->dropped) {
                continue;
            }
            max_index = MAX(max_index, b->index);
            if (b->new_offset) {
                continue;
            }
            if (t->fixed_rt) {
                /*
                 * Back to the block's cluster of the earlier view, which
                 * must be free now: one that still sits there (it would be
                 * written in place) cannot.  A block the earlier view did
                 * not have goes, if it counts nothing in the end (checked
                 * once all placements are done).
                 */
                uint64_t target = b->index < t->fixed_rt_size
                    ? t->fixed_rt[b->index] & REFT_OFFSET_MASK : 0;
                ret = -ENOTSUP;
                if (!target) {
                    b->dropped = true;
                    ret = 0;
                } else if (target != b->old_offset) {
                    ret = qcow2_txn_take(t, target >> s->cluster_bits, 1);
                }
                if (ret >= 0) {
                    b->new_offset = target;
                }
            } else {
                ret = qcow2_txn_alloc(t, 1, &b->new_offset);
            }
            if (ret >= 0 && b->old_offset) {
                ret = qcow2_txn_add(t, b->old_offset >> s->cluster_bits, -1);
            }
            if (ret < 0) {
                g_free(keys);
                return ret;
            }
            placed = true;
        }
        g_free(keys);

        uint64_t entries = MAX((uint64_t)s->refcount_table_size,
                               max_index + 1);
        uint64_t need = MAX(qcow2_size_to_clusters(s, entries * 8),
                            old_rt_clusters);
        if (need * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES) {
            return -EFBIG;
        }
        if (t->fixed_rt) {
            if (need > t->fixed_rt_clusters) {
                return -ENOTSUP;
            }
            if (!*rt_clusters) {
                for (uint64_t c = 0; c < t->fixed_rt_clusters; c++) {
                    ret = qcow2_txn_take(
                        t, (t->fixed_rt_offset >> s->cluster_bits) + c, 1);
                    if (ret < 0) {
                        return ret;
                    }
                }
                *rt_offset = t->fixed_rt_offset;
                *rt_clusters = t->fixed_rt_clusters;
                placed = true;
            }
        } else if (need > *rt_clusters) {
            if (*rt_clusters) {
                ret = qcow2_txn_free_range(t, *rt_offset,
                                           *rt_clusters << s->cluster_bits);
                if (ret < 0) {
                    return ret;
                }
            }
            ret = qcow2_txn_alloc(t, need, rt_offset);
            if (ret < 0) {
                return ret;
            }
            *rt_clusters = need;
            placed = true;
        }
        if (!placed) {
            break;
        }
    }
    GHashTableIter it;
    gpointer v;

    g_hash_table_iter_init(&it, t->blocks);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        TxnBlock *b = v;
        for (uint64_t i = 0; b->dropped && i < s->refcount_block_size; i++) {
            if (qcow2_refcount_array_get(s, b->buf, i)) {
                return -ENOTSUP;
            }
        }
    }
    return 0;
}

static int coroutine_fn write_checked(BlockNode *bs, int ign,
                                      uint64_t offset, const void *buf,
                                      uint64_t len)
{
    int ret = qcow2_check_overlap(bs, ign, offset, len);

    if (ret >= 0) {
        ret = child_co_pwrite(bs->file, (int64_t)offset, (int64_t)len, buf,
                              0);
    }
    return ret;
}

int coroutine_fn qcow2_txn_commit(Qcow2MetaTxn *t, const Qcow2TxnHeader *h,
                                  bool *switched)
{
    BlockNode *bs = t->bs;
    Qcow2State *s = bs->opaque;
    uint64_t rt_offset, rt_clusters;
    uint64_t *rt = NULL, *rt_be = NULL;
    uint64_t rt_entries;
    GHashTableIter it;
    gpointer v;
    int ret;

    *switched = false;
    ret = place_refcounts(t, &rt_offset, &rt_clusters);
    if (ret < 0) {
        return ret;
    }
    rt_entries = (rt_clusters << s->cluster_bits) / 8;
    rt = g_new0(uint64_t, rt_entries);
    memcpy(rt, s->refcount_table, (size_t)s->refcount_table_size * 8);
    g_hash_table_iter_init(&it, t->blocks);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        TxnBlock *b = v;
        if (b->index < rt_entries) {
            rt[b->index] = b->new_offset;
        }
    }
    for (uint64_t i = 0; t->fixed_rt && i < rt_entries; i++) {
        /* Only the earlier view's blocks, each at its own place. */
        uint64_t want = i < t->fixed_rt_size ? t->fixed_rt[i] : 0;
        if ((rt[i] & REFT_OFFSET_MASK) != (want & REFT_OFFSET_MASK)) {
            g_free(rt);
            return -ENOTSUP;
        }
    }

    /* Everything of the new view that is not in the old one... */
    for (guint i = 0; i < t->writes->len && ret >= 0; i++) {
        TxnWrite *w = &g_array_index(t->writes, TxnWrite, i);
        ret = write_checked(bs, w->ign, w->offset, w->buf, w->len);
    }
    g_hash_table_iter_init(&it, t->blocks);
    while (ret >= 0 && g_hash_table_iter_next(&it, NULL, &v)) {
        TxnBlock *b = v;
        if (b->dropped) {
            continue;
        }
        child_debug_event(bs->file, BLKDBG_REFBLOCK_UPDATE);
        ret = write_checked(bs, 0, b->new_offset, b->buf, s->cluster_size);
    }
    if (ret >= 0) {
        rt_be = g_new(uint64_t, rt_entries);
        for (uint64_t i = 0; i < rt_entries; i++) {
            rt_be[i] = htobe64(rt[i]);
        }
        child_debug_event(bs->file, BLKDBG_REFTABLE_UPDATE);
        ret = write_checked(bs, 0, rt_offset, rt_be, rt_entries * 8);
        g_free(rt_be);
    }
    /* ...is on disk before the header points at it. */
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        g_free(rt);
        return ret;
    }

    struct __attribute__((packed)) {
        uint64_t size;
        uint32_t crypt_method;
        uint32_t l1_size;
        uint64_t l1_table_offset;
        uint64_t refcount_table_offset;
        uint32_t refcount_table_clusters;
        uint32_t nb_snapshots;
        uint64_t snapshots_offset;
    } hdr = {
        htobe64(h->size), htobe32(s->crypt_method), htobe32(h->l1_size),
        htobe64(h->l1_table_offset), htobe64(rt_offset),
        htobe32((uint32_t)rt_clusters), htobe32(h->nb_snapshots),
        htobe64(h->snapshots_offset),
    };
    G_STATIC_ASSERT(sizeof(hdr) == 48);
    G_STATIC_ASSERT(offsetof(Qcow2DiskHeader, size) == 24);
    ret = child_co_pwrite(bs->file, offsetof(Qcow2DiskHeader, size),
                          sizeof(hdr), &hdr, 0);
    if (ret < 0) {
        /* Not switched (a failed write changes nothing we rely on). */
        g_free(rt);
        return ret;
    }

    /* The new view is the image now: the in-memory state follows. */
    *switched = true;
    g_free(s->refcount_table);
    s->refcount_table = rt;
    s->refcount_table_size = (uint32_t)rt_entries;
    s->refcount_table_offset = rt_offset;
    s->max_refcount_index = 0;
    for (uint64_t i = 0; i < rt_entries; i++) {
        if (rt[i]) {
            s->max_refcount_index = (uint32_t)i;
        }
    }
    /* Cached tables may be clusters the new view freed. */
    qcow2_cache_empty(s->l2_cache);
    qcow2_cache_empty(s->refcount_cache);
    s->free_cluster_index = 0;
    s->free_byte_offset = 0;

    ret = node_co_flush(bs->file->bs);
    if (ret >= 0 && !t->hold_discards) {
        qcow2_txn_discard_freed(t);
    }
    return ret;
}

void coroutine_fn qcow2_txn_discard_freed(Qcow2MetaTxn *t)
{
    BlockNode *bs = t->bs;
    Qcow2State *s = bs->opaque;

    if (!s->discard_passthrough_snapshot) {
        return;
    }
    /* Best effort: the space is free either way. */
    for (guint i = 0; i < t->freed->len; i++) {
        uint64_t c = g_array_index(t->freed, uint64_t, i), rc;
        if (qcow2_get_refcount(bs, c, &rc) >= 0 && rc == 0) {
            child_co_pdiscard(bs->file, (int64_t)(c << s->cluster_bits),
                              (int64_t)s->cluster_size);
        }
    }
}
