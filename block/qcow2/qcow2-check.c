/*
 * qcow2 consistency check: count every reference to every cluster from
 * the metadata (header, L1 and L2 tables of the image and its snapshots,
 * the refcount structures, the snapshot table, persistent bitmaps) and
 * compare with the stored refcounts.  With fixing enabled, the stored
 * refcounts are corrected; that is also how an image left dirty by lazy
 * refcounts is repaired on open.
 *
 * Fixing order matters: raising too-low refcounts may need new refcount
 * blocks, and those must not land on a cluster that is in use but counted
 * too low.  So allocation is first moved past every used cluster, then
 * low counts are raised, then leaks are lowered.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"

typedef struct Counts {
    uint64_t *ref;
    uint64_t n;
    Qcow2CheckResult *res;
} Counts;

static void count_range(BlockNode *bs, Counts *c, uint64_t offset,
                        uint64_t length)
{
    Qcow2State *s = bs->opaque;

    if (length == 0) {
        return;
    }
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + length - 1) >> s->cluster_bits;
    if (last >= (1ull << (56 - s->cluster_bits))) {
        c->res->corruptions++;
        return;
    }
    if (last >= c->n) {
        uint64_t n = MAX(last + 1, c->n * 2);
        c->ref = g_realloc(c->ref, n * sizeof(uint64_t));
        memset(c->ref + c->n, 0, (n - c->n) * sizeof(uint64_t));
        c->n = n;
    }
    for (uint64_t i = first; i <= last; i++) {
        c->ref[i]++;
    }
}

/* One L2 table's data clusters. */
static int coroutine_fn count_l2(BlockNode *bs, Counts *c, uint64_t l2_offset,
                                 bool active)
{
    Qcow2State *s = bs->opaque;
    void *l2;
    int ret = qcow2_cache_get(s->l2_cache, l2_offset, &l2);

    if (ret < 0) {
        c->res->check_errors++;
        return ret;
    }
    for (uint64_t i = 0; i < s->l2_size; i++) {
        uint64_t e = qcow2_l2_entry(s, l2, (unsigned)i);

        if (e & QCOW_OFLAG_COMPRESSED) {
            uint64_t coffset = e & s->cluster_offset_mask;
            uint64_t nb = ((e >> s->csize_shift) & s->csize_mask) + 1;
            uint64_t csize = nb * QCOW2_COMPRESSED_SECTOR_SIZE -
                             (coffset & (QCOW2_COMPRESSED_SECTOR_SIZE - 1));
            count_range(bs, c, coffset, csize);
            if (active) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
            }
            continue;
        }
        uint64_t host = e & L2E_OFFSET_MASK;
        if (!host || qcow2_has_data_file(s)) {
            if (active && (host || (e & QCOW_OFLAG_COPIED))) {
                c->res->allocated_clusters++;
            }
            continue;
        }
        if (qcow2_offset_into_cluster(s, host)) {
            c->res->corruptions++;
            continue;
        }
        count_range(bs, c, host, s->cluster_size);
        if (active) {
            c->res->allocated_clusters++;
        }
    }
    qcow2_cache_put(s->l2_cache, &l2);
    return 0;
}

static int coroutine_fn count_l1(BlockNode *bs, Counts *c, uint64_t l1_offset,
                                 uint32_t l1_size, const uint64_t *table,
                                 bool active)
{
    Qcow2State *s = bs->opaque;
    uint64_t *l1 = NULL;
    int ret = 0;

    count_range(bs, c, l1_offset, (uint64_t)l1_size * 8);
    if (!table && l1_size) {
        l1 = g_try_new(uint64_t, l1_size);
        if (!l1) {
            return -ENOMEM;
        }
        ret = child_co_pread(bs->file, (int64_t)l1_offset,
                             (int64_t)l1_size * 8, l1, 0);
        if (ret < 0) {
            c->res->check_errors++;
            g_free(l1);
            return ret;
        }
        for (uint32_t i = 0; i < l1_size; i++) {
            l1[i] = be64toh(l1[i]);
        }
        table = l1;
    }
    for (uint32_t i = 0; i < l1_size && ret >= 0; i++) {
        uint64_t l2 = table[i] & L1E_OFFSET_MASK;
        if (!l2) {
            continue;
        }
        if (qcow2_offset_into_cluster(s, l2)) {
            c->res->corruptions++;
            continue;
        }
        count_range(bs, c, l2, s->cluster_size);
        ret = count_l2(bs, c, l2, active);
    }
    g_free(l1);
    return ret;
}

/* Internal snapshots: the table and each snapshot's L1 and L2 tables. */
static int coroutine_fn count_snapshots(BlockNode *bs, Counts *c)
{
    Qcow2State *s = bs->opaque;
    uint64_t offset = s->snapshots_offset;
    int ret;

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        Qcow2DiskSnapshot sn;

        ret = child_co_pread(bs->file, (int64_t)offset, sizeof(sn), &sn, 0);
        if (ret < 0) {
            c->res->check_errors++;
            return ret;
        }
        uint64_t len = sizeof(sn) + be32toh(sn.extra_data_size) +
                       be16toh(sn.id_str_size) + be16toh(sn.name_size);
        len = ROUND_UP(len, 8);
        uint64_t l1_offset = be64toh(sn.l1_table_offset);
        uint32_t l1_size = be32toh(sn.l1_size);
        if (qcow2_offset_into_cluster(s, l1_offset) ||
            (uint64_t)l1_size * 8 > QCOW2_MAX_L1_BYTES) {
            c->res->corruptions++;
        } else {
            ret = count_l1(bs, c, l1_offset, l1_size, NULL, false);
            if (ret < 0) {
                return ret;
            }
        }
        offset += len;
    }
    if (s->nb_snapshots) {
        count_range(bs, c, s->snapshots_offset, offset - s->snapshots_offset);
    }
    return 0;
}

/* Persistent bitmaps: the directory, each bitmap table and its data. */
static int coroutine_fn count_bitmaps(BlockNode *bs, Counts *c)
{
    Qcow2State *s = bs->opaque;
    uint64_t dir_size = s->bitmaps_ext.bitmap_directory_size;
    uint8_t *dir;
    int ret;

    if (!s->has_bitmaps_ext || dir_size == 0) {
        return 0;
    }
    dir = g_try_malloc(dir_size);
    if (!dir) {
        return -ENOMEM;
    }
    ret = child_co_pread(bs->file,
                         (int64_t)s->bitmaps_ext.bitmap_directory_offset,
                         (int64_t)dir_size, dir, 0);
    if (ret < 0) {
        c->res->check_errors++;
        goto out;
    }
    count_range(bs, c, s->bitmaps_ext.bitmap_directory_offset, dir_size);
    for (uint64_t pos = 0, i = 0;
         i < s->bitmaps_ext.nb_bitmaps && pos + 24 <= dir_size; i++) {
        uint64_t table_offset;
        uint32_t table_size, extra;
        uint16_t name_size;

        memcpy(&table_offset, dir + pos, 8);
        memcpy(&table_size, dir + pos + 8, 4);
        memcpy(&name_size, dir + pos + 18, 2);
        memcpy(&extra, dir + pos + 20, 4);
        table_offset = be64toh(table_offset);
        table_size = be32toh(table_size);
        name_size = be16toh(name_size);
        extra = be32toh(extra);
        pos += ROUND_UP(24 + (uint64_t)extra + name_size, 8);

        if (!table_offset) {
            continue;
        }
        uint64_t *t = g_try_new(uint64_t, MAX(table_size, 1));
        if (!t) {
            ret = -ENOMEM;
            goto out;
        }
        ret = child_co_pread(bs->file, (int64_t)table_offset,
                             (int64_t)table_size * 8, t, 0);
        if (ret < 0) {
            c->res->check_errors++;
            g_free(t);
            goto out;
        }
        count_range(bs, c, table_offset, (uint64_t)table_size * 8);
        for (uint32_t j = 0; j < table_size; j++) {
            uint64_t d = be64toh(t[j]) & L2E_OFFSET_MASK;
            if (d) {
                count_range(bs, c, d, s->cluster_size);
            }
        }
        g_free(t);
    }
    ret = 0;
out:
    g_free(dir);
    return ret;
}

int coroutine_fn qcow2_co_check(BlockNode *bs, Qcow2CheckResult *res,
                                bool fix_errors, bool fix_leaks)
{
    Qcow2State *s = bs->opaque;
    Counts c = { .res = res };
    int64_t file_len = node_getlength(bs->file->bs);
    int ret;

    memset(res, 0, sizeof(*res));
    if (file_len < 0) {
        return (int)file_len;
    }
    c.n = MAX(qcow2_size_to_clusters(s, (uint64_t)file_len), 1);
    c.ref = g_new0(uint64_t, c.n);
    res->total_clusters = DIV_ROUND_UP(s->size, s->cluster_size);

    count_range(bs, &c, 0, s->cluster_size);
    ret = count_l1(bs, &c, s->l1_table_offset, s->l1_size, s->l1_table, true);
    if (ret >= 0) {
        ret = count_snapshots(bs, &c);
    }
    if (ret >= 0) {
        ret = count_bitmaps(bs, &c);
    }
    if (ret < 0) {
        goto out;
    }
    count_range(bs, &c, s->refcount_table_offset,
                (uint64_t)s->refcount_table_size * 8);
    for (uint32_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t rb = s->refcount_table[i] & REFT_OFFSET_MASK;
        if (rb) {
            count_range(bs, &c, rb, s->cluster_size);
        }
    }

    /* Allocation must not hand out a used cluster while we fix counts. */
    uint64_t last_used = 0;
    for (uint64_t i = 0; i < c.n; i++) {
        if (c.ref[i]) {
            last_used = i + 1;
        }
    }
    res->image_end_offset = last_used << s->cluster_bits;
    if (fix_errors || fix_leaks) {
        s->free_cluster_index = MAX(s->free_cluster_index, last_used);
    }

    /* Compare up to the end of everything that has either count. */
    uint64_t end;
    ret = qcow2_end_of_used(bs, false, &end);
    if (ret < 0) {
        goto out;
    }
    end = MAX(end, c.n);
    /*
     * Leaks first (lowering never allocates), then counts that are too low
     * (raising may create refcount blocks, placed past every used cluster).
     */
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t i = 0; i < end; i++) {
            uint64_t want = i < c.n ? c.ref[i] : 0, have;
            ret = qcow2_get_refcount(bs, i, &have);
            if (ret < 0) {
                goto out;
            }
            if (pass == 0 && have > want) {
                res->leaks++;
                if (fix_leaks) {
                    ret = qcow2_update_cluster_refcount(
                        bs, i, -(int)(have - want), QCOW2_DISCARD_NEVER);
                    if (ret < 0) {
                        goto out;
                    }
                    res->leaks_fixed++;
                }
            } else if (pass == 1 && have < want) {
                res->corruptions++;
                if (fix_errors) {
                    ret = qcow2_update_cluster_refcount(
                        bs, i, (int)(want - have), QCOW2_DISCARD_NEVER);
                    if (ret < 0) {
                        goto out;
                    }
                    res->corruptions_fixed++;
                }
            }
        }
    }
    if (fix_errors || fix_leaks) {
        ret = qcow2_cache_flush(s->refcount_cache);
        s->free_cluster_index = 0;
    }
out:
    g_free(c.ref);
    return ret;
}
