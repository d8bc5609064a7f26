/*
 * Refcounts: reading and changing them, and allocating and freeing
 * clusters.
 *
 * Ordering rules that keep the image consistent after a crash at any point
 * (each "before" is a write that reaches the disk before the next one):
 *   - a new refcount block is written before the refcount table points at
 *     it, and the table entry is written before anything relies on it;
 *   - a cluster's refcount is raised before any L2 or L1 entry points at it
 *     (the L2 cache depends on the refcount cache);
 *   - a refcount is lowered only after the pointer to the cluster is gone
 *     (callers update L2 first).
 * A crash can then leak clusters (refcount too high), which `check -r
 * leaks` repairs, but never leave a cluster in use with a low refcount.
 *
 * The caller holds s->lock for everything here.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qcow2.h"

/* ---- Entries of a refcount block (big endian, 1 to 64 bits wide) ---- */

uint64_t qcow2_refblock_get(unsigned order, const void *rb, uint64_t i)
{
    const uint8_t *p = rb;

    switch (order) {
    case 0: return (p[i / 8] >> (i % 8)) & 1;
    case 1: return (p[i / 4] >> (2 * (i % 4))) & 3;
    case 2: return (p[i / 2] >> (4 * (i % 2))) & 15;
    case 3: return p[i];
    case 4: return be16toh(((const uint16_t *)rb)[i]);
    case 5: return be32toh(((const uint32_t *)rb)[i]);
    default: return be64toh(((const uint64_t *)rb)[i]);
    }
}

void qcow2_refblock_set(unsigned order, void *rb, uint64_t i, uint64_t v)
{
    uint8_t *p = rb;
    unsigned shift, mask;

    switch (order) {
    case 0: case 1: case 2:
        /* Sub-byte entries: the lowest bits hold the first entry. */
        shift = (unsigned)((i % (8u >> order)) << order);
        mask = ((1u << (1u << order)) - 1) << shift;
        p[i >> (3 - order)] =
            (uint8_t)((p[i >> (3 - order)] & ~mask) | ((v << shift) & mask));
        break;
    case 3: p[i] = (uint8_t)v; break;
    case 4: ((uint16_t *)rb)[i] = htobe16((uint16_t)v); break;
    case 5: ((uint32_t *)rb)[i] = htobe32((uint32_t)v); break;
    default: ((uint64_t *)rb)[i] = htobe64(v); break;
    }
}

static uint64_t rb_get(const Qcow2State *s, const void *rb, uint64_t i)
{
    return qcow2_refblock_get(s->refcount_order, rb, i);
}

static void rb_set(const Qcow2State *s, void *rb, uint64_t i, uint64_t v)
{
    qcow2_refblock_set(s->refcount_order, rb, i, v);
}

uint64_t qcow2_refcount_array_get(const Qcow2State *s, const void *rb,
                                  uint64_t i)
{
    return rb_get(s, rb, i);
}

void qcow2_refcount_array_set(const Qcow2State *s, void *rb, uint64_t i,
                              uint64_t v)
{
    rb_set(s, rb, i, v);
}

int coroutine_fn qcow2_get_refcount(BlockNode *bs, uint64_t cluster,
                                    uint64_t *refcount)
{
    Qcow2State *s = bs->opaque;
    uint64_t rt_index = cluster >> s->refcount_block_bits;
    uint64_t rb_offset;
    void *rb;
    int ret;

    *refcount = 0;
    if (rt_index >= s->refcount_table_size) {
        return 0;
    }
    rb_offset = s->refcount_table[rt_index] & REFT_OFFSET_MASK;
    if (!rb_offset) {
        return 0;
    }
    if (qcow2_offset_into_cluster(s, rb_offset)) {
        qcow2_signal_corruption(bs, true, -1, -1, "Refblock offset %#" PRIx64
                                " unaligned (reftable index: %#" PRIx64 ")",
                                rb_offset, rt_index);
        return -EIO;
    }
    ret = qcow2_cache_get(s->refcount_cache, rb_offset, &rb);
    if (ret < 0) {
        return ret;
    }
    *refcount = rb_get(s, rb, cluster & (s->refcount_block_size - 1));
    qcow2_cache_put(s->refcount_cache, &rb);
    return 0;
}

/*
 * The first cluster past everything in use: past the end of the file and
 * past every cluster with a refcount (allocated clusters may not be
 * written yet).
 */
int coroutine_fn qcow2_end_of_used(BlockNode *bs, bool with_file,
                                   uint64_t *end)
{
    Qcow2State *s = bs->opaque;
    int64_t len = node_getlength(bs->file->bs);

    if (len < 0) {
        return (int)len;
    }
    *end = with_file ? qcow2_size_to_clusters(s, (uint64_t)len) : 0;
    for (uint64_t r = s->refcount_table_size; r > 0; r--) {
        if (!(s->refcount_table[r - 1] & REFT_OFFSET_MASK)) {
            continue;
        }
        uint64_t base = (r - 1) << s->refcount_block_bits;
        for (uint64_t i = s->refcount_block_size; i > 0; i--) {
            uint64_t rc;
            int ret = qcow2_get_refcount(bs, base + i - 1, &rc);
            if (ret < 0) {
                return ret;
            }
            if (rc) {
                *end = MAX(*end, base + i);
                return 0;
            }
        }
    }
    return 0;
}

/* ---- The discard queue ---- */

typedef struct Qcow2Discard {
    uint64_t offset, bytes;
} Qcow2Discard;

static void queue_discard(Qcow2State *s, uint64_t offset, uint64_t bytes)
{
    if (!s->discards) {
        s->discards = g_array_new(FALSE, FALSE, sizeof(Qcow2Discard));
    }
    /*
     * Clusters are mostly freed in ascending order: extend the last run
     * when it can; the rest is sorted and merged when the queue is sent.
     */
    if (s->discards->len) {
        Qcow2Discard *d = &g_array_index(s->discards, Qcow2Discard,
                                         s->discards->len - 1);
        if (d->offset + d->bytes == offset) {
            d->bytes += bytes;
            return;
        }
    }
    Qcow2Discard d = { offset, bytes };
    g_array_append_val(s->discards, d);
}

/*
 * A queued cluster that is allocated again must not be discarded later,
 * when it may hold new data or metadata: cut it out of its run.
 */
static void unqueue_discard(Qcow2State *s, uint64_t offset, uint64_t bytes)
{
    if (!s->discards) {
        return;
    }
    for (guint i = 0; i < s->discards->len; i++) {
        Qcow2Discard *d = &g_array_index(s->discards, Qcow2Discard, i);
        uint64_t end = d->offset + d->bytes;
        if (offset >= end || offset + bytes <= d->offset) {
            continue;
        }
        Qcow2Discard tail = { offset + bytes, 0 };
        if (end > offset + bytes) {
            tail.bytes = end - (offset + bytes);
        }
        d->bytes = offset > d->offset ? offset - d->offset : 0;
        if (!d->bytes) {
            g_array_remove_index(s->discards, i);
            i--;
        }
        if (tail.bytes) {
            g_array_insert_val(s->discards, i + 1, tail);
            i++;
        }
    }
}

static gint discard_cmp(gconstpointer a, gconstpointer b)
{
    const Qcow2Discard *x = a, *y = b;

    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static void coroutine_fn process_discards(BlockNode *bs, int ret)
{
    Qcow2State *s = bs->opaque;
    GArray *q = s->discards;

    if (!q || !q->len) {
        return;
    }
    s->discards = NULL;
    if (ret >= 0) {
        g_array_sort(q, discard_cmp);
        for (guint i = 0; i < q->len;) {
            Qcow2Discard run = g_array_index(q, Qcow2Discard, i);
            for (i++; i < q->len; i++) {
                Qcow2Discard *d = &g_array_index(q, Qcow2Discard, i);
                if (d->offset > run.offset + run.bytes) {
                    break;
                }
                run.bytes = MAX(run.bytes, d->offset + d->bytes - run.offset);
            }
            /* Best effort: the space is free whether or not this works. */
            child_co_pdiscard(bs->file, (int64_t)run.offset,
                              (int64_t)run.bytes);
        }
    }
    g_array_free(q, TRUE);
}

void qcow2_discard_batch_begin(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;

    s->discard_batch++;
}

void coroutine_fn qcow2_discard_batch_end(BlockNode *bs, int ret)
{
    Qcow2State *s = bs->opaque;

    g_assert(s->discard_batch > 0);
    if (--s->discard_batch == 0) {
        process_discards(bs, ret);
    }
}

void qcow2_discard_queue_free(Qcow2State *s)
{
    if (s->discards) {
        g_array_free(s->discards, TRUE);
        s->discards = NULL;
    }
}

/*
 * Find n free clusters in a row without taking them.  Clusters with no
 * refcount block are free (refcount 0).
 */
static int coroutine_fn find_free(BlockNode *bs, uint64_t n, uint64_t *first)
{
    Qcow2State *s = bs->opaque;
    uint64_t start = s->free_cluster_index, run = 0;

    /*
     * Past the end of the file too: clusters just allocated there are not
     * written yet, and only their refcount says they are taken.
     */
    for (uint64_t c = start; run < n; c++) {
        uint64_t rc = 0;
        int ret = 0;
        if (c >= s->refblock_skip_start && c < s->refblock_skip_end) {
            rc = 1;
        } else {
            ret = qcow2_get_refcount(bs, c, &rc);
        }
        if (ret < 0) {
            return ret;
        }
        if (rc == 0) {
            if (run == 0) {
                start = c;
            }
            run++;
        } else {
            run = 0;
        }
        /* Offsets must stay within the 56 bits L2 entries can hold. */
        if (c >= (1ull << (56 - s->cluster_bits))) {
            return -EFBIG;
        }
    }
    *first = start;
    return 0;
}

static int coroutine_fn write_reftable_entry(BlockNode *bs, uint64_t index)
{
    Qcow2State *s = bs->opaque;
    uint64_t be = htobe64(s->refcount_table[index]);

    child_debug_event(bs->file, BLKDBG_REFBLOCK_ALLOC_HOOKUP);
    return child_co_pwrite(bs->file,
                           (int64_t)(s->refcount_table_offset + index * 8),
                           8, &be, 0);
}

static int coroutine_fn update_refcount(BlockNode *bs, uint64_t offset,
                                        uint64_t length, uint64_t addend,
                                        bool decrease, Qcow2DiscardType dt);
static int coroutine_fn grow_reftable(BlockNode *bs, uint64_t start,
                                     uint64_t additional, bool exact,
                                     uint64_t new_index, uint64_t new_block,
                                     uint64_t *end_offset);

/*
 * Make sure a refcount block exists for rt_index.  A new block is put in
 * the first free cluster; if that cluster is one the new block describes,
 * the block carries its own refcount, else the cluster's refcount is raised
 * through its own block (which may need a block in turn: this recursion
 * ends because every step describes clusters further out).
 */
static int coroutine_fn ensure_refblock(BlockNode *bs, uint64_t rt_index)
{
    Qcow2State *s = bs->opaque;
    uint64_t c;
    void *rb;
    int ret;

    if (rt_index < s->refcount_table_size &&
        (s->refcount_table[rt_index] & REFT_OFFSET_MASK)) {
        return 0;
    }

    child_debug_event(bs->file, BLKDBG_REFBLOCK_ALLOC);
    ret = find_free(bs, 1, &c);
    if (ret < 0) {
        return ret;
    }
    uint64_t rb_offset = c << s->cluster_bits;
    bool self = (c >> s->refcount_block_bits) == rt_index;

    /*
     * A block that the recursion below needs must not land on c too (c has
     * no refcount yet): look further on, as QEMU does.  Nothing before c
     * is free, so moving the start skips nothing.
     */
    s->free_cluster_index = MAX(s->free_cluster_index, c + 1);

    if (!self) {
        /* Account for the block's cluster before it is used. */
        ret = update_refcount(bs, rb_offset, s->cluster_size, 1, false,
                              QCOW2_DISCARD_NEVER);
        if (ret < 0) {
            return ret;
        }
        /* That may have created our block already (same region). */
        if (rt_index < s->refcount_table_size &&
            (s->refcount_table[rt_index] & REFT_OFFSET_MASK)) {
            return update_refcount(bs, rb_offset, s->cluster_size, 1, true,
                                   QCOW2_DISCARD_NEVER);
        }
    }
    ret = qcow2_cache_get_empty(s->refcount_cache, rb_offset, &rb);
    if (ret < 0) {
        return ret;
    }
    memset(rb, 0, s->cluster_size);
    if (self) {
        rb_set(s, rb, c & (s->refcount_block_size - 1), 1);
        unqueue_discard(s, rb_offset, s->cluster_size);
    }
    qcow2_cache_mark_dirty(s->refcount_cache, rb);
    qcow2_cache_put(s->refcount_cache, &rb);

    child_debug_event(bs->file, BLKDBG_REFBLOCK_ALLOC_WRITE);
    if (rt_index < s->refcount_table_size &&
        s->n_unhooked < QCOW2_MAX_UNHOOKED) {
        /* In use from now on; on disk after the next sync (Hookups). */
        s->refcount_table[rt_index] = rb_offset;
        s->max_refcount_index = MAX(s->max_refcount_index,
                                    (uint32_t)rt_index);
        s->unhooked[s->n_unhooked++] = rt_index;
        return 0;
    }
    /* The block must be on disk before the table points at it. */
    ret = qcow2_cache_flush(s->refcount_cache);
    if (ret < 0) {
        return ret;
    }
    if (rt_index >= s->refcount_table_size) {
        /*
         * The table is full: a new one, with refcount blocks for itself,
         * goes past every block in use (counting this one), as QEMU
         * places it, and takes this block's entry with it.
         */
        uint64_t blocks_used = MAX(rt_index + 1,
                                   DIV_ROUND_UP(c + 1, s->refcount_block_size));
        return grow_reftable(bs, blocks_used << s->refcount_block_bits,
                             0, false, rt_index, rb_offset, NULL);
    }
    s->refcount_table[rt_index] = rb_offset;
    s->max_refcount_index = MAX(s->max_refcount_index, (uint32_t)rt_index);
    ret = write_reftable_entry(bs, rt_index);
    if (ret < 0) {
        s->refcount_table[rt_index] = 0;
        return ret;
    }
    return 0;
}

/*
 * ---- Hookups ----
 *
 * A new refcount block must be on disk before the table entry that
 * points at it, or a crash leaves the table pointing at a cluster that
 * reads as zeroes, counting clusters in use (the block's own among them)
 * as free.  QEMU, and strata until 2026-12-07, synced the file for that
 * right where the block was made, with s->lock held: every allocating
 * write waited, and the sync wrote all the data dirtied in the file since
 * the last one (1-2 s in a 2 GiB stream, when the top outgrew its first
 * block).
 *
 * The block is only needed on disk, with its entry, before anything on
 * disk relies on the refcounts it holds: an L2 or L1 entry pointing at a
 * cluster it counts, the header or a new refcount table naming it.  Every
 * such write already comes after a flush of the refcount cache (the L2
 * cache depends on it; table and header writers flush it first).  So the
 * entry is set in memory at once and written by that flush, after its
 * sync has made the block durable, and followed by a second sync:
 *
 *   block dirty in the cache -> [flush: write blocks, sync, write the
 *   entries, sync] -> L2 tables, L1, header ...
 *
 * A flush of the node (flush_to_os) does the same, so that after any
 * flush the file holds the whole metadata.
 *
 * A crash before the flush leaves the old table, which does not know the
 * block: the clusters it counts are free on disk, and nothing on disk
 * points at them (their data may be written, their L2 entries are not).
 * A crash between the two writes leaves the block on disk and no entry:
 * the same.  Reads of refcounts go to the table in memory, so the image
 * in use never sees the difference.
 */
bool qcow2_refblock_hookups_pending(const Qcow2State *s)
{
    return s->n_unhooked > 0;
}

int coroutine_fn qcow2_write_refblock_hookups(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;

    while (s->n_unhooked > 0) {
        uint64_t rt_index = s->unhooked[0];
        int ret = 0;

        /* Dropped meanwhile (a shrink) or past a moved table: nothing to
         * write here, the table in the file was written whole since. */
        if (rt_index < s->refcount_table_size) {
            ret = write_reftable_entry(bs, rt_index);
        }
        if (ret < 0) {
            return ret;
        }
        memmove(s->unhooked, s->unhooked + 1,
                --s->n_unhooked * sizeof(s->unhooked[0]));
    }
    return 0;
}

/*
 * Refcount blocks and table entries QEMU's sizing gives an image of n
 * clusters, with room to grow if generous (qcow2_refcount_metadata_size's
 * fixed point): the number of refcount blocks.
 */
static uint64_t refblocks_for(const Qcow2State *s, uint64_t clusters,
                              bool generous)
{
    uint64_t per_table_cluster = s->cluster_size / 8;
    uint64_t table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = DIV_ROUND_UP(clusters + table + blocks,
                              s->refcount_block_size);
        table = DIV_ROUND_UP(blocks, per_table_cluster);
        n = clusters + blocks + table;
        if (n == last && generous) {
            clusters += DIV_ROUND_UP(table, 2);
            n = 0;
            generous = false;
        }
    } while (n != last);
    return blocks;
}

/*
 * A new refcount table, laid out as QEMU lays it out (its
 * qcow2_refcount_area): from cluster `start` (past every refcount block in
 * use), first the refcount blocks missing for the area, then the table.
 * The table covers start + additional clusters, exactly or (!exact) with
 * half again as many entries as the blocks it needs.  The new blocks count
 * the area's clusters; the table gets new_block (if not 0) at new_index.
 * Everything is written before the header switches to the new table, so a
 * crash leaves either table in force; the old table's clusters are freed
 * last.  *end_offset (if wanted): the byte just past the area.
 */
static int coroutine_fn grow_reftable(BlockNode *bs, uint64_t start,
                                     uint64_t additional, bool exact,
                                     uint64_t new_index, uint64_t new_block,
                                     uint64_t *end_offset)
{
    Qcow2State *s = bs->opaque;
    uint64_t per_cluster = s->cluster_size / 8;
    uint64_t total = refblocks_for(s, start + additional, !exact);
    uint64_t area_index = start >> s->refcount_block_bits;
    int ret;

    child_debug_event(bs->file, BLKDBG_REFTABLE_GROW);
    if (total > QCOW2_MAX_REFTABLE_BYTES / 8 ||
        (new_block && new_index >= total)) {
        return -EFBIG;
    }
    uint64_t table_size = ROUND_UP(exact ? total
                                         : total + DIV_ROUND_UP(total, 2),
                                   per_cluster);
    uint64_t table_clusters = table_size / per_cluster;
    if (table_size > QCOW2_MAX_REFTABLE_BYTES / 8) {
        return -EFBIG;
    }
    uint64_t *table = g_try_new0(uint64_t, table_size);
    if (!table) {
        return -ENOMEM;
    }
    uint64_t keep = MIN(table_size, (uint64_t)s->max_refcount_index + 1);
    memcpy(table, s->refcount_table,
           MIN(keep, s->refcount_table_size) * 8);
    if (new_block) {
        table[new_index] = new_block;
    }

    uint64_t missing = 0;
    for (uint64_t i = area_index; i < total; i++) {
        missing += !table[i];
    }
    uint64_t table_offset = (start + missing) << s->cluster_bits;
    uint64_t end = table_offset + table_clusters * s->cluster_size;
    uint64_t block = start << s->cluster_bits;

    for (uint64_t i = area_index; i < total; i++) {
        void *rb;

        if (table[i]) {
            ret = qcow2_cache_get(s->refcount_cache, table[i], &rb);
        } else {
            ret = qcow2_cache_get_empty(s->refcount_cache, block, &rb);
            if (ret >= 0) {
                memset(rb, 0, s->cluster_size);
                table[i] = block;
                block += s->cluster_size;
            }
        }
        if (ret < 0) {
            g_free(table);
            return ret;
        }
        /* Refcount 1 for the new blocks and table this block covers. */
        uint64_t first = (i << s->refcount_block_bits) << s->cluster_bits;
        if (first < end) {
            uint64_t j = first < (start << s->cluster_bits)
                         ? ((start << s->cluster_bits) - first) >>
                           s->cluster_bits
                         : 0;
            uint64_t stop = MIN((end - first) >> s->cluster_bits,
                                s->refcount_block_size);
            for (; j < stop; j++) {
                rb_set(s, rb, j, 1);
            }
        }
        qcow2_cache_mark_dirty(s->refcount_cache, rb);
        qcow2_cache_put(s->refcount_cache, &rb);
    }
    g_assert(block == table_offset);

    child_debug_event(bs->file, BLKDBG_REFBLOCK_ALLOC_WRITE_BLOCKS);
    ret = qcow2_cache_flush(s->refcount_cache);
    for (uint64_t i = 0; i < table_size; i++) {
        table[i] = htobe64(table[i]);
    }
    if (ret >= 0) {
        child_debug_event(bs->file, BLKDBG_REFBLOCK_ALLOC_WRITE_TABLE);
        ret = child_co_pwrite(bs->file, (int64_t)table_offset,
                              (int64_t)(table_size * 8), table, 0);
    }
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    for (uint64_t i = 0; i < table_size; i++) {
        table[i] = be64toh(table[i]);
    }
    if (ret < 0) {
        g_free(table);
        return ret;
    }

    /* Switch: table offset and size in one header write. */
    struct __attribute__((packed)) {
        uint64_t offset;
        uint32_t clusters;
    } hdr = { htobe64(table_offset), htobe32((uint32_t)table_clusters) };
    child_debug_event(bs->file, BLKDBG_REFBLOCK_ALLOC_SWITCH_TABLE);
    ret = child_co_pwrite(bs->file,
                          offsetof(Qcow2DiskHeader, refcount_table_offset),
                          sizeof(hdr), &hdr, 0);
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        g_free(table);
        return ret;
    }

    uint64_t old_offset = s->refcount_table_offset;
    uint64_t old_size = s->refcount_table_size;
    g_free(s->refcount_table);
    s->refcount_table = table;
    s->refcount_table_size = (uint32_t)table_size;
    s->refcount_table_offset = table_offset;
    s->max_refcount_index = 0;
    for (uint64_t i = 0; i < table_size; i++) {
        if (table[i]) {
            s->max_refcount_index = (uint32_t)i;
        }
    }
    /* As QEMU: a failure to free the old table only leaks it. */
    qcow2_free_clusters(bs, old_offset, old_size * 8, QCOW2_DISCARD_OTHER);
    if (end_offset) {
        *end_offset = end;
    }
    return 0;
}

int coroutine_fn qcow2_refcount_area(BlockNode *bs, uint64_t start,
                                     uint64_t additional, uint64_t *end)
{
    Qcow2State *s = bs->opaque;

    return grow_reftable(bs, start >> s->cluster_bits, additional, true, 0, 0,
                         end);
}

/*
 * Add (or subtract) addend to the refcount of every cluster that
 * [offset, offset + length) touches.  On failure part of the range may be
 * updated: callers treat that as leaked or mark the image corrupt.
 */
static bool discard_wanted(const Qcow2State *s, Qcow2DiscardType dt)
{
    switch (dt) {
    case QCOW2_DISCARD_ALWAYS: return true;
    case QCOW2_DISCARD_REQUEST: return s->discard_passthrough_request;
    case QCOW2_DISCARD_SNAPSHOT: return s->discard_passthrough_snapshot;
    case QCOW2_DISCARD_OTHER: return s->discard_passthrough_other;
    default: return false;
    }
}

static int coroutine_fn update_refcount(BlockNode *bs, uint64_t offset,
                                        uint64_t length, uint64_t addend,
                                        bool decrease, Qcow2DiscardType dt)
{
    Qcow2State *s = bs->opaque;
    uint64_t first, last;
    void *rb = NULL;
    uint64_t rb_index = UINT64_MAX;
    int ret = 0;

    if (length == 0) {
        return 0;
    }
    first = offset >> s->cluster_bits;
    last = (offset + length - 1) >> s->cluster_bits;
    if (decrease) {
        child_debug_event(bs->file, BLKDBG_REFBLOCK_UPDATE_PART);
    }

    for (uint64_t c = first; c <= last; c++) {
        uint64_t rt_index = c >> s->refcount_block_bits;

        if (rt_index != rb_index) {
            if (rb) {
                qcow2_cache_put(s->refcount_cache, &rb);
            }
            /* QEMU announces every switch to a block, new or not (026). */
            child_debug_event(bs->file, BLKDBG_REFBLOCK_ALLOC);
            if (decrease && (rt_index >= s->refcount_table_size ||
                             !(s->refcount_table[rt_index] &
                               REFT_OFFSET_MASK))) {
                /* No refcount block: the refcount is 0 already. */
                qcow2_signal_corruption(bs, true, -1, -1, "Cannot decrease "
                                        "refcount of cluster %#" PRIx64
                                        " below 0", c << s->cluster_bits);
                return -EIO;
            }
            ret = ensure_refblock(bs, rt_index);
            if (ret < 0) {
                return ret;
            }
            uint64_t rb_offset = s->refcount_table[rt_index] &
                                 REFT_OFFSET_MASK;
            /*
             * As QEMU: announced for each block whose refcounts change,
             * even when it is cached (the free-cluster search before has
             * usually read it), so a persistent error injected here fails
             * the writes that follow, not the search (026).
             */
            child_debug_event(bs->file, BLKDBG_REFBLOCK_LOAD);
            ret = qcow2_cache_get(s->refcount_cache, rb_offset, &rb);
            if (ret < 0) {
                return ret;
            }
            rb_index = rt_index;
        }

        uint64_t i = c & (s->refcount_block_size - 1);
        uint64_t rc = rb_get(s, rb, i);
        if (decrease ? rc < addend : s->refcount_max - rc < addend) {
            qcow2_cache_put(s->refcount_cache, &rb);
            if (decrease) {
                qcow2_signal_corruption(bs, true, -1, -1, "Cannot decrease "
                                        "refcount of cluster %#" PRIx64
                                        " below 0", c << s->cluster_bits);
                return -EIO;
            }
            /* An overflow is EINVAL in QEMU, and users see the errno. */
            return -EINVAL;
        }
        rc = decrease ? rc - addend : rc + addend;
        rb_set(s, rb, i, rc);
        qcow2_cache_mark_dirty(s->refcount_cache, rb);
        if (rc == 0 && c < s->free_cluster_index) {
            s->free_cluster_index = c;
        }
        if (rc == 0 && s->free_byte_offset &&
            (s->free_byte_offset >> s->cluster_bits) == c) {
            /* Compressed data must not be packed into a freed cluster. */
            s->free_byte_offset = 0;
        }
        if (rc == 0) {
            /* A freed metadata cluster must not linger in a cache. */
            if (!qcow2_cache_discard(s->l2_cache, c << s->cluster_bits) ||
                !qcow2_cache_discard(s->refcount_cache,
                                     c << s->cluster_bits)) {
                qcow2_cache_put(s->refcount_cache, &rb);
                qcow2_signal_corruption(bs, true, -1, -1, "Freeing cluster "
                                        "%#" PRIx64 ", a metadata table "
                                        "in use", c << s->cluster_bits);
                return -EIO;
            }
            if (discard_wanted(s, dt)) {
                queue_discard(s, c << s->cluster_bits, s->cluster_size);
            }
        } else if (!decrease && rc == addend) {
            unqueue_discard(s, c << s->cluster_bits, s->cluster_size);
        }
    }
    if (rb) {
        qcow2_cache_put(s->refcount_cache, &rb);
    }
    if (!s->discard_batch) {
        process_discards(bs, 0);
    }
    return 0;
}

/*
 * Refcount blocks for every cluster of [first, first + n): true in *created
 * if one had to be made (it may have landed inside the range, so the caller
 * looks again and comes back for the next one).
 */
static int coroutine_fn ensure_refblocks(BlockNode *bs, uint64_t first,
                                         uint64_t n, bool *created)
{
    Qcow2State *s = bs->opaque;
    uint64_t a = first >> s->refcount_block_bits;
    uint64_t b = (first + n - 1) >> s->refcount_block_bits;

    *created = false;
    for (uint64_t r = a; r <= b; r++) {
        if (r < s->refcount_table_size &&
            (s->refcount_table[r] & REFT_OFFSET_MASK)) {
            continue;
        }
        int ret = ensure_refblock(bs, r);
        if (ret < 0) {
            return ret;
        }
        /* As QEMU: one new block, then the caller looks for space again. */
        *created = true;
        return 0;
    }
    return 0;
}

int coroutine_fn qcow2_alloc_clusters(BlockNode *bs, uint64_t n,
                                      uint64_t *offset)
{
    return qcow2_alloc_clusters_for(bs, n, offset, NULL);
}

/*
 * The refcount blocks for a fresh run of n clusters at first (QEMU's
 * qcow2_alloc_clusters, whose search has passed the run when it needs a
 * block): new ones go after the run, where QEMU puts them, and the next search for free
 * clusters starts where this one began (or at the run, if a block was
 * created, since the run must be looked for again).
 */
static int coroutine_fn refblocks_after_run(BlockNode *bs, uint64_t first,
                                            uint64_t n, bool *created)
{
    Qcow2State *s = bs->opaque;
    uint64_t search = s->free_cluster_index;
    int ret;

    s->free_cluster_index = first + n;
    ret = ensure_refblocks(bs, first, n, created);
    s->free_cluster_index = search;
    if (ret >= 0 && *created) {
        s->free_cluster_index = MIN(s->free_cluster_index, first);
    }
    return ret;
}

/*
 * The refcount blocks for a run continued at a given place (QEMU's
 * qcow2_alloc_clusters_at, used where an allocating write goes on in the
 * next L2 table or slice): QEMU raises the run's refcounts block by block
 * and, at the first block that is missing, takes the first free cluster
 * from the search's start, counting the part of the run it has already
 * raised as taken.  Without holes that is the missing block's first
 * cluster, inside the run, which then ends there.  Then the search starts
 * at the run again (QEMU's -EAGAIN).
 */
static int coroutine_fn refblock_in_continued_run(BlockNode *bs,
                                                  uint64_t first, uint64_t n,
                                                  bool *created)
{
    Qcow2State *s = bs->opaque;
    uint64_t a = first >> s->refcount_block_bits;
    uint64_t b = (first + n - 1) >> s->refcount_block_bits;
    int ret;

    *created = false;
    for (uint64_t r = a; r <= b; r++) {
        if (r < s->refcount_table_size &&
            (s->refcount_table[r] & REFT_OFFSET_MASK)) {
            continue;
        }
        s->refblock_skip_start = first;
        s->refblock_skip_end = MAX(first, r << s->refcount_block_bits);
        ret = ensure_refblock(bs, r);
        s->refblock_skip_start = s->refblock_skip_end = 0;
        if (ret < 0) {
            return ret;
        }
        *created = true;
        s->free_cluster_index = MIN(s->free_cluster_index, first);
        return 0;
    }
    return 0;
}

int coroutine_fn qcow2_alloc_clusters_for(BlockNode *bs, uint64_t n,
                                          uint64_t *offset, const char *what)
{
    Qcow2State *s = bs->opaque;
    uint64_t first;
    bool created;
    int ret;

    child_debug_event(bs->file, BLKDBG_CLUSTER_ALLOC);
    /*
     * The refcount blocks describing the run come first; a new block may
     * take a cluster of the run, so then look again.
     */
    do {
        ret = find_free(bs, n, &first);
        if (ret < 0) {
            return ret;
        }
        ret = refblocks_after_run(bs, first, n, &created);
        if (ret < 0) {
            return ret;
        }
    } while (created);
    if (first == 0) {
        /* The header's refcount says it is free: the refcounts are broken. */
        if (what) {
            qcow2_signal_corruption(bs, true, -1, -1, "Preventing invalid "
                                    "allocation of %s at offset 0", what);
        } else {
            qcow2_signal_corruption(bs, true, -1, -1, "Preventing invalid "
                                    "allocation of the header cluster");
        }
        return -EIO;
    }
    ret = update_refcount(bs, first << s->cluster_bits, n << s->cluster_bits,
                          1, false, QCOW2_DISCARD_NEVER);
    if (ret < 0) {
        return ret;
    }
    s->free_cluster_index = first + n;
    *offset = first << s->cluster_bits;
    return 0;
}

int coroutine_fn qcow2_alloc_clusters_at(BlockNode *bs, uint64_t offset,
                                         uint64_t n, uint64_t *got)
{
    Qcow2State *s = bs->opaque;
    uint64_t first = offset >> s->cluster_bits, i;
    bool created;
    int ret;

    *got = 0;
    if (first == 0) {
        return 0;
    }
    do {
        for (i = 0; i < n; i++) {
            uint64_t rc;
            ret = qcow2_get_refcount(bs, first + i, &rc);
            if (ret < 0) {
                return ret;
            }
            if (rc) {
                break;
            }
        }
        if (i == 0) {
            return 0;
        }
        /* A new refcount block may still take one of them: count again. */
        ret = refblock_in_continued_run(bs, first, i, &created);
        if (ret < 0) {
            return ret;
        }
    } while (created);
    ret = update_refcount(bs, offset, i << s->cluster_bits, 1, false,
                          QCOW2_DISCARD_NEVER);
    if (ret < 0) {
        return ret;
    }
    *got = i;
    return 0;
}

int coroutine_fn qcow2_free_clusters(BlockNode *bs, uint64_t offset,
                                     uint64_t length, Qcow2DiscardType dt)
{
    child_debug_event(bs->file, BLKDBG_CLUSTER_FREE);
    int ret = update_refcount(bs, offset, length, 1, true, dt);
    if (ret < 0) {
        /* QEMU says so here, whoever the caller (iotest 217 shows it). */
        fprintf(stderr, "qcow2_free_clusters failed: %s\n",
                g_strerror(-ret));
    }
    return ret;
}

int coroutine_fn qcow2_update_refcount_range(BlockNode *bs, uint64_t offset,
                                             uint64_t length, uint64_t addend,
                                             bool decrease,
                                             Qcow2DiscardType dt)
{
    return update_refcount(bs, offset, length, addend, decrease, dt);
}

int coroutine_fn qcow2_update_cluster_refcount(BlockNode *bs, uint64_t cluster,
                                               int addend,
                                               Qcow2DiscardType dt)
{
    Qcow2State *s = bs->opaque;

    return update_refcount(bs, cluster << s->cluster_bits, s->cluster_size,
                           (uint64_t)(addend < 0 ? -addend : addend),
                           addend < 0, dt);
}

int coroutine_fn qcow2_alloc_bytes(BlockNode *bs, uint64_t size,
                                   uint64_t *offset)
{
    Qcow2State *s = bs->opaque;
    uint64_t off = s->free_byte_offset, rc;
    int ret;

    g_assert(size > 0 && size <= s->cluster_size);
    child_debug_event(bs->file, BLKDBG_CLUSTER_ALLOC_BYTES);
    if (off) {
        /* The partly used cluster can take no more users. */
        ret = qcow2_get_refcount(bs, off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc == s->refcount_max) {
            off = 0;
        }
    }
    uint64_t free_in_cluster = off ? s->cluster_size -
                                     qcow2_offset_into_cluster(s, off) : 0;
    if (!off || free_in_cluster < size) {
        uint64_t c;
        bool created;
        do {
            ret = find_free(bs, 1, &c);
            if (ret < 0) {
                return ret;
            }
            uint64_t search = s->free_cluster_index;
            s->free_cluster_index = c + 1;
            ret = ensure_refblocks(bs, c, 1, &created);
            s->free_cluster_index = search;
            if (ret < 0) {
                return ret;
            }
        } while (created);
        if (c == 0) {
            qcow2_signal_corruption(bs, true, -1, -1, "Preventing invalid "
                                    "allocation of compressed cluster at "
                                    "offset 0");
            return -EIO;
        }
        /* Continue into the next cluster only if it is the adjacent one. */
        if (!off || ROUND_UP(off, s->cluster_size) != c << s->cluster_bits) {
            off = c << s->cluster_bits;
        }
    }
    /* Every cluster the bytes touch gets one more user. */
    ret = update_refcount(bs, off, size, 1, false, QCOW2_DISCARD_NEVER);
    if (ret < 0) {
        return ret;
    }
    s->free_byte_offset = off + size;
    if (!qcow2_offset_into_cluster(s, s->free_byte_offset)) {
        s->free_byte_offset = 0;
    }
    *offset = off;
    return 0;
}

/*
 * After a shrink: refcount blocks that count nothing (but maybe their own
 * cluster) leave the table, which is written and synced first, and their
 * clusters are freed and discarded in the file, as QEMU does.  Lock held.
 */
int coroutine_fn qcow2_shrink_reftable(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    uint64_t *t;
    int ret = 0;

    /* The whole table is written below: its new blocks go to disk first. */
    if (qcow2_refblock_hookups_pending(s)) {
        ret = qcow2_cache_flush(s->refcount_cache);
        if (ret < 0) {
            return ret;
        }
    }
    t = g_try_new(uint64_t, s->refcount_table_size);
    if (!t) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t rb_offset = s->refcount_table[i] & REFT_OFFSET_MASK;
        void *rb;
        bool unused = true;

        t[i] = 0;
        if (!rb_offset) {
            continue;
        }
        ret = qcow2_cache_get(s->refcount_cache, rb_offset, &rb);
        if (ret < 0) {
            goto out;
        }
        uint64_t own = (rb_offset >> s->cluster_bits) >> s->refcount_block_bits
                       == i ? (rb_offset >> s->cluster_bits) &
                              (s->refcount_block_size - 1)
                            : UINT64_MAX;
        for (uint64_t e = 0; e < s->refcount_block_size && unused; e++) {
            unused = e == own || rb_get(s, rb, e) == 0;
        }
        qcow2_cache_put(s->refcount_cache, &rb);
        t[i] = unused ? 0 : htobe64(s->refcount_table[i]);
    }

    ret = child_co_pwrite(bs->file, (int64_t)s->refcount_table_offset,
                          (int64_t)s->refcount_table_size * 8, t, 0);
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    /*
     * After a failed write the table on disk may be partly new: forget
     * the dropped blocks in memory either way, so that nothing is counted
     * in a block the file may no longer point at.
     */
    for (uint32_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t rb_offset = s->refcount_table[i] & REFT_OFFSET_MASK;
        if (!rb_offset || t[i]) {
            continue;
        }
        if (ret >= 0) {
            /* The block's own refcount lives in the block covering it. */
            uint64_t c = rb_offset >> s->cluster_bits;
            uint64_t r = c >> s->refcount_block_bits;
            uint64_t cover = r < s->refcount_table_size
                             ? s->refcount_table[r] & REFT_OFFSET_MASK : 0;
            void *rb;
            if (!cover) {
                qcow2_signal_corruption(bs, true, -1, -1, "Refblock at %#"
                                        PRIx64 " is not covered by the "
                                        "refcount structures", rb_offset);
                ret = -EIO;
            } else {
                ret = qcow2_cache_get(s->refcount_cache, cover, &rb);
            }
            if (ret >= 0) {
                uint64_t e = c & (s->refcount_block_size - 1);
                if (rb_get(s, rb, e) != 1) {
                    qcow2_signal_corruption(bs, true, -1, -1, "Invalid "
                                            "refcount: refblock offset %#"
                                            PRIx64 ", reftable index %u"
                                            ", block offset %#" PRIx64
                                            ", refcount %#" PRIx64, cover,
                                            (unsigned)r, rb_offset,
                                            rb_get(s, rb, e));
                    ret = -EINVAL;
                } else {
                    rb_set(s, rb, e, 0);
                    qcow2_cache_mark_dirty(s->refcount_cache, rb);
                }
                qcow2_cache_put(s->refcount_cache, &rb);
            }
            if (ret >= 0) {
                s->free_cluster_index = MIN(s->free_cluster_index, c);
                qcow2_cache_discard(s->refcount_cache, rb_offset);
                queue_discard(s, rb_offset, s->cluster_size);
            }
        }
        s->refcount_table[i] = 0;
    }
    s->max_refcount_index = 0;
    for (uint32_t i = 0; i < s->refcount_table_size; i++) {
        if (s->refcount_table[i]) {
            s->max_refcount_index = i;
        }
    }
    if (!s->discard_batch) {
        process_discards(bs, ret);
    }
out:
    g_free(t);
    return ret;
}
