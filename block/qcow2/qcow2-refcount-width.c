/*
 * Changing the width of refcount entries (qemu-img amend -o refcount_bits).
 *
 * The new refcount structure is built beside the old one.  Its blocks and
 * its table are ordinary clusters, allocated through the old structure, so
 * their own refcounts must show up in the new blocks: an allocation pass
 * reads every old refcount, decides which new blocks hold a non-zero entry
 * and allocates those not yet allocated (and a table big enough); since
 * allocating changes refcounts that the pass may already have read, passes
 * repeat until one allocates nothing.  A last pass fills the new blocks and
 * writes them, then the new table is written, and one header write
 * switches the image to it.  Only then are the old blocks and table freed,
 * through the new structure.
 *
 * Crash safety: until the header write the old structure is untouched
 * except for the allocations, so a crash leaks the new clusters; after
 * it, the old ones.  Nothing ever points at a block that is not written.
 *
 * Allocations happen in the order QEMU 7.2 makes them, so the amended file
 * has QEMU's layout, and progress is reported per refcount table entry of
 * each pass as QEMU does (a pass more than expected shows as regressing
 * progress).
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"

typedef struct {
    BlockNode *bs;
    unsigned order;           /* the new width is 2^order bits */
    uint64_t per_block;       /* entries in a new refcount block */
    uint64_t *table;          /* the new refcount table, host order */
    uint64_t table_size;      /* its entries */
    uint64_t index;           /* the new block being filled */
    uint64_t filled;          /* entries of it filled so far */
    bool empty;               /* all of them zero */
    uint8_t *block;           /* its contents (write pass only) */
    bool allocated;           /* the allocation pass allocated something */
    GError **errp;
} WidthWalk;

/* The allocation pass's verdict on a new block that is complete. */
static int coroutine_fn alloc_block(WidthWalk *w)
{
    Qcow2State *s = w->bs->opaque;

    if (w->empty) {
        return 0;
    }
    if (w->index >= w->table_size) {
        uint64_t per_cluster = s->cluster_size / 8;
        uint64_t size = ROUND_UP(w->index + 1, per_cluster);

        if (size > QCOW2_MAX_REFTABLE_BYTES / 8) {
            error_setg(w->errp, "This operation would make the refcount table "
                       "grow beyond the maximum size supported by QEMU, "
                       "aborting");
            return -ENOTSUP;
        }
        uint64_t *t = g_try_renew(uint64_t, w->table, size);
        if (!t) {
            error_setg(w->errp, "Failed to increase reftable buffer size");
            return -ENOMEM;
        }
        memset(t + w->table_size, 0, (size - w->table_size) * 8);
        w->table = t;
        w->table_size = size;
    }
    if (!w->table[w->index]) {
        uint64_t off;
        int ret = qcow2_alloc_clusters(w->bs, 1, &off);
        if (ret < 0) {
            error_setg_errno(w->errp, -ret, "Failed to allocate refblock");
            return ret;
        }
        w->table[w->index] = off;
        w->allocated = true;
    }
    return 0;
}

/* The write pass: the block goes where the allocation passes put it. */
static int coroutine_fn write_block(WidthWalk *w)
{
    Qcow2State *s = w->bs->opaque;
    uint64_t off = w->index < w->table_size ? w->table[w->index] : 0;
    int ret;

    if (!off) {
        /* The allocation passes were stable: an empty block has no place. */
        g_assert(w->empty);
        return 0;
    }
    ret = qcow2_check_overlap(w->bs, 0, off, s->cluster_size);
    if (ret < 0) {
        error_setg_errno(w->errp, -ret, "Overlap check failed");
        return ret;
    }
    ret = child_co_pwrite(w->bs->file, (int64_t)off, (int64_t)s->cluster_size,
                          w->block, 0);
    if (ret < 0) {
        error_setg_errno(w->errp, -ret, "Failed to write refblock");
    }
    return ret;
}

static int coroutine_fn finish_block(WidthWalk *w)
{
    int ret = w->block ? write_block(w) : alloc_block(w);

    w->index++;
    w->filled = 0;
    w->empty = true;
    return ret;
}

/*
 * Append n refcounts to the new structure: n zeroes when rb is NULL, else
 * the entries of the old block rb from entry 0.  A full new block is
 * finished only when the next entry arrives, and the last one after the
 * walk, as QEMU does: the allocations happen at the same moments.
 */
static int coroutine_fn append(WidthWalk *w, const void *rb, uint64_t n,
                               uint64_t first_cluster)
{
    Qcow2State *s = w->bs->opaque;
    uint64_t i = 0;

    while (i < n) {
        if (w->filled == w->per_block) {
            int ret = finish_block(w);
            if (ret < 0) {
                return ret;
            }
        }
        if (w->filled == 0 && w->block) {
            memset(w->block, 0, s->cluster_size);
        }
        uint64_t k = MIN(n - i, w->per_block - w->filled);
        if (rb) {
            for (uint64_t j = 0; j < k; j++) {
                /*
                 * Read the entry only now: an allocation made for an
                 * earlier block may have changed it (rb is the cached
                 * block itself).
                 */
                uint64_t v = qcow2_refblock_get(s->refcount_order, rb, i + j);
                if (!v) {
                    continue;
                }
                if (w->order < 6 && (v >> (1u << w->order))) {
                    error_setg(w->errp, "Cannot decrease refcount entry width "
                               "to %u bits: Cluster at offset %#" PRIx64
                               " has a refcount of %" PRIu64, 1u << w->order,
                               (first_cluster + i + j) << s->cluster_bits, v);
                    return -EINVAL;
                }
                if (w->block) {
                    qcow2_refblock_set(w->order, w->block, w->filled + j, v);
                }
                w->empty = false;
            }
        }
        w->filled += k;
        i += k;
    }
    return 0;
}

static void report(Qcow2AmendStatus *status, void *opaque, uint64_t done,
                   uint64_t total)
{
    if (status) {
        status(opaque, (int64_t)done, (int64_t)total);
    }
}

/* One pass over the old structure; pass is this pass's number of passes. */
static int coroutine_fn walk(WidthWalk *w, unsigned pass, unsigned passes,
                             Qcow2AmendStatus *status, void *opaque)
{
    Qcow2State *s = w->bs->opaque;
    int ret;

    w->index = 0;
    w->filled = 0;
    w->empty = true;
    /* Allocations may grow the old table while we walk it. */
    for (uint64_t r = 0; r < s->refcount_table_size; r++) {
        uint64_t off = s->refcount_table[r] & REFT_OFFSET_MASK;
        uint64_t first = r << s->refcount_block_bits;
        void *rb = NULL;

        report(status, opaque, (uint64_t)pass * s->refcount_table_size + r,
               (uint64_t)passes * s->refcount_table_size);
        if (off) {
            if (qcow2_offset_into_cluster(s, off)) {
                qcow2_signal_corruption(w->bs, true, -1, -1, "Refblock offset "
                                        "%#" PRIx64 " unaligned (reftable "
                                        "index: %#" PRIx64 ")", off, r);
                error_setg(w->errp, "Image is corrupt (unaligned refblock "
                           "offset)");
                return -EIO;
            }
            ret = qcow2_cache_get(s->refcount_cache, off, &rb);
            if (ret < 0) {
                error_setg_errno(w->errp, -ret, "Failed to retrieve refblock");
                return ret;
            }
            ret = append(w, rb, s->refcount_block_size, first);
            qcow2_cache_put(s->refcount_cache, &rb);
        } else {
            ret = append(w, NULL, s->refcount_block_size, first);
        }
        if (ret < 0) {
            return ret;
        }
    }
    if (w->filled > 0) {
        ret = finish_block(w);
        if (ret < 0) {
            return ret;
        }
    }
    report(status, opaque, (uint64_t)(pass + 1) * s->refcount_table_size,
           (uint64_t)passes * s->refcount_table_size);
    return 0;
}

/* Free every block a table lists, and the table's own table_bytes. */
static void coroutine_fn free_structure(BlockNode *bs, const uint64_t *table,
                                        uint64_t size, uint64_t table_offset,
                                        uint64_t table_bytes)
{
    Qcow2State *s = bs->opaque;

    /* Failures here only leak clusters; the image stays consistent. */
    for (uint64_t i = 0; i < size; i++) {
        uint64_t off = table[i] & REFT_OFFSET_MASK;
        if (off) {
            qcow2_free_clusters(bs, off, s->cluster_size, QCOW2_DISCARD_OTHER);
        }
    }
    if (table_offset) {
        qcow2_free_clusters(bs, table_offset, table_bytes,
                            QCOW2_DISCARD_OTHER);
    }
}

int coroutine_fn qcow2_change_refcount_order(BlockNode *bs, unsigned order,
                                             Qcow2AmendStatus *status,
                                             void *opaque, GError **errp)
{
    Qcow2State *s = bs->opaque;
    WidthWalk w = {
        .bs = bs,
        .order = order,
        /* cluster_size * 8 bits / 2^order bits per entry */
        .per_block = (uint64_t)1 << (s->cluster_bits + 3 - order),
        .errp = errp,
    };
    uint64_t table_offset = 0, table_alloc_size = 0;
    unsigned pass = 0;
    uint64_t *old_table;
    uint64_t old_size, old_offset;
    unsigned old_order;
    int ret;

    g_assert(s->version >= 3 && order <= 6);

    do {
        /* Normally three passes: allocate, confirm, write. */
        unsigned passes = MAX(pass + 2, 3u);

        w.allocated = false;
        ret = walk(&w, pass++, passes, status, opaque);
        if (ret < 0) {
            goto fail;
        }
        if (w.allocated) {
            /* The table grew or its own clusters need new refcounts. */
            if (table_offset) {
                qcow2_free_clusters(bs, table_offset, table_alloc_size * 8,
                                    QCOW2_DISCARD_NEVER);
            }
            ret = qcow2_alloc_clusters(bs, w.table_size * 8 / s->cluster_size,
                                       &table_offset);
            if (ret < 0) {
                table_offset = 0;
                error_setg_errno(errp, -ret,
                                 "Failed to allocate the new reftable");
                goto fail;
            }
            table_alloc_size = w.table_size;
        }
    } while (w.allocated);

    w.block = g_malloc(s->cluster_size);
    ret = walk(&w, pass, pass + 1, status, opaque);
    g_free(w.block);
    w.block = NULL;
    if (ret < 0) {
        goto fail;
    }
    g_assert(!w.allocated && table_alloc_size == w.table_size);

    ret = qcow2_check_overlap(bs, 0, table_offset, w.table_size * 8);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Overlap check failed");
        goto fail;
    }
    {
        uint64_t *be = g_new(uint64_t, w.table_size);
        for (uint64_t i = 0; i < w.table_size; i++) {
            be[i] = htobe64(w.table[i]);
        }
        ret = child_co_pwrite(bs->file, (int64_t)table_offset,
                              (int64_t)(w.table_size * 8), be, 0);
        g_free(be);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to write the new reftable");
        goto fail;
    }
    ret = qcow2_cache_flush(s->refcount_cache);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to flush the refblock cache");
        goto fail;
    }

    /* The switch: the header write is the moment the new structure counts. */
    old_order = s->refcount_order;
    old_size = s->refcount_table_size;
    old_offset = s->refcount_table_offset;
    s->refcount_order = order;
    s->refcount_table_size = (uint32_t)w.table_size;
    s->refcount_table_offset = table_offset;
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        s->refcount_order = old_order;
        s->refcount_table_size = (uint32_t)old_size;
        s->refcount_table_offset = old_offset;
        error_setg_errno(errp, -ret, "Failed to update the qcow2 header");
        goto fail;
    }

    /* The cached blocks have the old width: none of them may be used again. */
    qcow2_cache_empty(s->refcount_cache);
    old_table = s->refcount_table;
    s->refcount_table = w.table;
    s->max_refcount_index = 0;
    for (uint64_t i = 0; i < w.table_size; i++) {
        if (w.table[i]) {
            s->max_refcount_index = (uint32_t)i;
        }
    }
    s->refcount_bits = 1u << order;
    s->refcount_max = order == 6 ? UINT64_MAX
                                 : ((uint64_t)1 << s->refcount_bits) - 1;
    s->refcount_block_bits = s->cluster_bits - (order - 3);
    s->refcount_block_size = (uint64_t)1 << s->refcount_block_bits;
    s->free_cluster_index = 0;
    free_structure(bs, old_table, old_size, old_offset, old_size * 8);
    g_free(old_table);
    return 0;

fail:
    /* Give back what the new structure took, through the old structure. */
    free_structure(bs, w.table, w.table_size, table_offset,
                   table_alloc_size * 8);
    g_free(w.table);
    return ret;
}
