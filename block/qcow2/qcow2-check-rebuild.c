/*
 * qcow2 check: rebuilding the refcount structure from the counts.
 *
 * The counts array is, byte for byte, the concatenation of the refcount
 * blocks a correct image would have, so each refcount block written is a
 * slice of it.  New refcount blocks and the new refcount table take free
 * clusters of the counts (first fit, as QEMU does, so that the repaired
 * file has QEMU's layout); every such allocation is itself counted, which
 * may touch a refcount block already written (it is written again) or
 * need a larger table (whose place is then chosen again).  This settles:
 * each table cluster holds far more entries than it needs.
 *
 * The old structure is not freed here: it becomes a set of leaked clusters
 * that the check's second pass frees.
 */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <string.h>

#include "strata/iov.h"
#include "qcow2-check.h"

/*
 * n free clusters in a row in the counts (counted as used from now on),
 * at or after *first_free; *first_free moves to the first free cluster
 * seen.  Returns the offset, or -errno.
 */
static int64_t alloc_in_counts(Qcow2Check *c, int64_t n, int64_t *first_free)
{
    int64_t cluster = *first_free, run = 0;
    bool seen_free = false;

    for (; cluster < c->nb_clusters && run < n; cluster++) {
        if (qcow2_check_count_get(c, cluster)) {
            run = 0;
            continue;
        }
        run++;
        if (!seen_free) {
            *first_free = cluster;
            seen_free = true;
        }
    }
    if (run < n) {
        /* The rest goes past the end of the file. */
        int ret = qcow2_check_resize_counts(c, cluster + n - run);
        if (ret < 0) {
            return ret;
        }
    }
    cluster -= run;
    for (int64_t i = 0; i < n; i++) {
        qcow2_check_count_set(c, cluster + i, 1);
    }
    return cluster << c->s->cluster_bits;
}

/*
 * Write the refcount block of every cluster in [first, end) that is in
 * use, allocating blocks that *table does not have yet (growing *table to
 * whole clusters of entries).  Returns 1 if *table grew, 0 if not.
 */
static int coroutine_fn write_refblocks(Qcow2Check *c, int64_t first,
                                        int64_t end, uint64_t **table,
                                        uint32_t *entries, GError **errp)
{
    Qcow2State *s = c->s;
    int64_t first_free = 0;
    bool grown = false;
    int ret;

    for (int64_t cluster = first; cluster < end; cluster++) {
        uint64_t index = (uint64_t)cluster >> s->refcount_block_bits;
        int64_t block_start = (int64_t)(index << s->refcount_block_bits);
        int64_t offset;

        /*
         * A block's counts are one cluster of bytes: all zero, nothing of
         * it is in use (a mostly empty file is millions of clusters).
         */
        if ((cluster == first || cluster == block_start) &&
            buffer_is_zero(c->counts + index * s->cluster_size,
                           s->cluster_size)) {
            cluster = block_start + (int64_t)s->refcount_block_size - 1;
            continue;
        }
        if (!qcow2_check_count_get(c, cluster)) {
            continue;
        }

        if (*entries > index && (*table)[index]) {
            offset = (int64_t)(*table)[index];
        } else {
            /* Not inside a block written already. */
            first_free = MAX(first_free, block_start);
            offset = alloc_in_counts(c, 1, &first_free);
            if (offset < 0) {
                error_setg_errno(errp, (int)-offset,
                                 "ERROR allocating refblock");
                return (int)offset;
            }
            /* The block that counts this one must be written too. */
            end = MAX(end, (offset >> s->cluster_bits) + 1);
            if (*entries <= index) {
                uint64_t n = ROUND_UP((index + 1) * 8, s->cluster_size) / 8;
                if (n > QCOW2_MAX_REFTABLE_BYTES / 8) {
                    error_setg_errno(errp, EFBIG,
                                     "ERROR allocating reftable memory");
                    return -EFBIG;
                }
                uint64_t *t = g_try_renew(uint64_t, *table, n);
                if (!t) {
                    error_setg(errp, "ERROR allocating reftable memory");
                    return -ENOMEM;
                }
                memset(t + *entries, 0, (n - *entries) * 8);
                *table = t;
                *entries = (uint32_t)n;
                grown = true;
            }
            (*table)[index] = (uint64_t)offset;
        }

        ret = qcow2_check_overlap(c->bs, 0, (uint64_t)offset, s->cluster_size);
        if (ret >= 0) {
            ret = child_co_pwrite(c->bs->file, offset,
                                  (int64_t)s->cluster_size,
                                  c->counts + index * s->cluster_size, 0);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "ERROR writing refblock");
            return ret;
        }
        /* The block covers the rest of its range. */
        cluster = block_start + (int64_t)s->refcount_block_size - 1;
    }
    return grown;
}

int coroutine_fn qcow2_check_rebuild_refcounts(Qcow2Check *c, GError **errp)
{
    Qcow2State *s = c->s;
    uint64_t *table = NULL;
    uint32_t entries = 0;
    int64_t table_offset = -1;
    uint64_t table_clusters = 0;
    int ret;

    /* The old blocks are about to be replaced: nothing may be cached. */
    ret = qcow2_cache_flush(s->refcount_cache);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "ERROR writing refblock");
        c->res->check_errors++;
        return ret;
    }
    qcow2_cache_empty(s->refcount_cache);

    ret = write_refblocks(c, 0, c->nb_clusters, &table, &entries, errp);
    if (ret < 0) {
        c->res->check_errors++;
        goto fail;
    }
    /* Place the table; if that needed a larger table, place it again. */
    do {
        int64_t first_free = 0;

        table_clusters = qcow2_size_to_clusters(s, (uint64_t)entries * 8);
        table_offset = alloc_in_counts(c, (int64_t)table_clusters,
                                       &first_free);
        if (table_offset < 0) {
            error_setg_errno(errp, (int)-table_offset,
                             "ERROR allocating reftable");
            c->res->check_errors++;
            ret = (int)table_offset;
            goto fail;
        }
        int64_t start = table_offset >> s->cluster_bits;
        ret = write_refblocks(c, start, start + (int64_t)table_clusters,
                              &table, &entries, errp);
        if (ret < 0) {
            c->res->check_errors++;
            goto fail;
        }
    } while (ret);

    for (uint32_t i = 0; i < entries; i++) {
        table[i] = htobe64(table[i]);
    }
    ret = qcow2_check_overlap(c->bs, 0, (uint64_t)table_offset,
                              (uint64_t)entries * 8);
    if (ret >= 0) {
        ret = child_co_pwrite(c->bs->file, table_offset,
                              (int64_t)entries * 8, table, 0);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "ERROR writing reftable");
        goto fail;
    }

    struct __attribute__((packed)) {
        uint64_t offset;
        uint32_t clusters;
    } ptr = { htobe64((uint64_t)table_offset),
              htobe32((uint32_t)table_clusters) };
    ret = child_co_pwrite(c->bs->file,
                          offsetof(Qcow2DiskHeader, refcount_table_offset),
                          sizeof(ptr), &ptr, 0);
    if (ret >= 0) {
        ret = node_co_flush(c->bs->file->bs);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "ERROR setting reftable");
        goto fail;
    }

    s->max_refcount_index = 0;
    for (uint32_t i = 0; i < entries; i++) {
        table[i] = be64toh(table[i]);
        if (table[i]) {
            s->max_refcount_index = i;
        }
    }
    g_free(s->refcount_table);
    s->refcount_table = table;
    s->refcount_table_offset = (uint64_t)table_offset;
    s->refcount_table_size = entries;
    s->free_cluster_index = 0;
    return 0;

fail:
    g_free(table);
    return ret;
}
