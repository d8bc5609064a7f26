/*
 * qcow2 consistency check: count every reference to every cluster from
 * the metadata (header, L1 and L2 tables of the image and its snapshots,
 * the refcount structures, the snapshot table, persistent bitmaps) and
 * compare with the stored refcounts; check that the "copied" flags agree
 * with the refcounts.  Problems are printed to stderr as they are found,
 * in QEMU 7.2's words.  With fixing enabled, the stored refcounts and
 * flags are corrected; that is also how an image left dirty by lazy
 * refcounts is repaired on open.
 *
 * Fixing order matters: raising too-low refcounts may need new refcount
 * blocks, and those must not land on a cluster that is in use but counted
 * too low.  So leaks are lowered first (that never allocates), allocation
 * is moved past every used cluster, and then low counts are raised.
 * (QEMU rebuilds the whole refcount structure when counts are too low;
 * the result is as consistent, the layout differs.)
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qcow2.h"

typedef struct Counts {
    uint64_t *ref;
    uint64_t n;
    BlockCheckResult *res;
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
        fprintf(stderr, "ERROR: reference to cluster %#" PRIx64 " beyond "
                "the maximum image size\n", offset);
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

/* One L2 table's data clusters; frag: collect allocation statistics. */
static int coroutine_fn count_l2(BlockNode *bs, Counts *c, uint64_t l2_offset,
                                 bool frag)
{
    Qcow2State *s = bs->opaque;
    uint64_t next_contiguous = 0;
    void *l2;
    int ret = qcow2_cache_get(s->l2_cache, l2_offset, &l2);

    if (ret < 0) {
        fprintf(stderr, "ERROR: I/O error in check_refcounts_l2\n");
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
            if (frag) {
                /* Compressed clusters are fragmented by nature. */
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->res->fragmented_clusters++;
            }
            continue;
        }
        uint64_t host = e & L2E_OFFSET_MASK;
        bool allocated = host || (qcow2_has_data_file(s) &&
                                  (e & QCOW_OFLAG_COPIED));
        if (!allocated) {
            continue;
        }
        if (frag) {
            c->res->allocated_clusters++;
            if (next_contiguous && host != next_contiguous) {
                c->res->fragmented_clusters++;
            }
            next_contiguous = host + s->cluster_size;
        }
        if (qcow2_has_data_file(s)) {
            continue;              /* data file clusters have no refcount */
        }
        if (qcow2_offset_into_cluster(s, host)) {
            fprintf(stderr, "ERROR offset=%" PRIx64 ": Cluster is not "
                    "properly aligned; L2 entry corrupted.\n", host);
            c->res->corruptions++;
            continue;
        }
        count_range(bs, c, host, s->cluster_size);
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
            fprintf(stderr, "ERROR: I/O error in check_refcounts_l1\n");
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
            fprintf(stderr, "ERROR l2_offset=%" PRIx64 ": Table is not "
                    "cluster aligned; L1 entry corrupted\n", l2);
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
        uint64_t l1_offset = be64toh(sn.l1_table_offset);
        uint32_t l1_size = be32toh(sn.l1_size);
        if (qcow2_offset_into_cluster(s, l1_offset) ||
            (uint64_t)l1_size * 8 > QCOW2_MAX_L1_BYTES) {
            fprintf(stderr, "ERROR snapshot %" PRIu32 " has an invalid L1 "
                    "table\n", i);
            c->res->corruptions++;
        } else {
            ret = count_l1(bs, c, l1_offset, l1_size, NULL, false);
            if (ret < 0) {
                return ret;
            }
        }
        offset += ROUND_UP(len, 8);
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

/*
 * The copied flag must be set exactly where the refcount is 1: on the
 * active L1 entries and on the data clusters of the active L2 tables.
 */
static int coroutine_fn check_copied(BlockNode *bs, BlockCheckResult *res,
                                     int fix)
{
    Qcow2State *s = bs->opaque;
    bool fix_all = fix & CHECK_FIX_ERRORS;
    int ret;

    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l1e = s->l1_table[i], l2_offset = l1e & L1E_OFFSET_MASK, rc;
        void *l2;

        if (!l2_offset || qcow2_offset_into_cluster(s, l2_offset)) {
            continue;
        }
        ret = qcow2_get_refcount(bs, l2_offset >> s->cluster_bits, &rc);
        if (ret < 0) {
            res->check_errors++;
            continue;
        }
        if ((rc == 1) != !!(l1e & QCOW_OFLAG_COPIED)) {
            res->corruptions += !fix_all;
            fprintf(stderr, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32
                    " l1_entry=%" PRIx64 " refcount=%" PRIu64 "\n",
                    fix_all ? "Repairing" : "ERROR", i, l1e, rc);
            if (fix_all) {
                uint64_t be;
                s->l1_table[i] = rc == 1 ? l1e | QCOW_OFLAG_COPIED
                                         : l1e & ~QCOW_OFLAG_COPIED;
                be = htobe64(s->l1_table[i]);
                ret = child_co_pwrite(bs->file,
                                      (int64_t)(s->l1_table_offset + i * 8ull),
                                      8, &be, 0);
                if (ret < 0) {
                    res->check_errors++;
                    res->corruptions++;
                } else {
                    res->corruptions_fixed++;
                }
            }
        }
        ret = qcow2_cache_get(s->l2_cache, l2_offset, &l2);
        if (ret < 0) {
            res->check_errors++;
            continue;
        }
        for (uint64_t j = 0; j < s->l2_size; j++) {
            uint64_t e = qcow2_l2_entry(s, l2, (unsigned)j);
            uint64_t host = e & L2E_OFFSET_MASK;

            if ((e & QCOW_OFLAG_COMPRESSED) || !host ||
                qcow2_has_data_file(s) ||
                qcow2_offset_into_cluster(s, host)) {
                continue;
            }
            ret = qcow2_get_refcount(bs, host >> s->cluster_bits, &rc);
            if (ret < 0) {
                res->check_errors++;
                continue;
            }
            if ((rc == 1) != !!(e & QCOW_OFLAG_COPIED)) {
                res->corruptions += !fix_all;
                fprintf(stderr, "%s OFLAG_COPIED data cluster: l2_entry=%"
                        PRIx64 " refcount=%" PRIu64 "\n",
                        fix_all ? "Repairing" : "ERROR", e, rc);
                if (fix_all) {
                    qcow2_set_l2_entry(s, l2, (unsigned)j,
                                       rc == 1 ? e | QCOW_OFLAG_COPIED
                                               : e & ~QCOW_OFLAG_COPIED);
                    qcow2_cache_mark_dirty(s->l2_cache, l2);
                    res->corruptions_fixed++;
                }
            }
        }
        qcow2_cache_put(s->l2_cache, &l2);
    }
    return fix_all ? qcow2_cache_flush(s->l2_cache) : 0;
}

int coroutine_fn qcow2_co_check_locked(BlockNode *bs, BlockCheckResult *res,
                                       int fix)
{
    Qcow2State *s = bs->opaque;
    Counts c = { .res = res };
    int64_t file_len = node_getlength(bs->file->bs);
    int ret;

    memset(res, 0, sizeof(*res));
    if (file_len < 0) {
        res->check_errors++;
        return (int)file_len;
    }
    c.n = MAX(qcow2_size_to_clusters(s, (uint64_t)file_len), 1);
    c.ref = g_new0(uint64_t, c.n);
    res->total_clusters = (int64_t)DIV_ROUND_UP(s->size, s->cluster_size);

    count_range(bs, &c, 0, s->cluster_size);
    if (s->crypto_header_length) {
        count_range(bs, &c, s->crypto_header_offset, s->crypto_header_length);
    }
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

    /*
     * Compare cluster by cluster and report, as QEMU does; then, when
     * fixing, go over the differences again: leaks first (lowering never
     * allocates), then the counts that are too low.
     */
    uint64_t highest = 0;
    GArray *diff = g_array_new(false, false, sizeof(uint64_t));
    for (uint64_t i = 0; i < c.n; i++) {
        uint64_t have;
        ret = qcow2_get_refcount(bs, i, &have);
        if (ret < 0) {
            fprintf(stderr, "Can't get refcount for cluster %" PRIu64 ": %s\n",
                    i, g_strerror(-ret));
            res->check_errors++;
            continue;
        }
        if (have || c.ref[i]) {
            highest = i + 1;
        }
        if (have != c.ref[i]) {
            fprintf(stderr, "%s cluster %" PRIu64 " refcount=%" PRIu64
                    " reference=%" PRIu64 "\n",
                    have < c.ref[i] ? "ERROR" : "Leaked", i, have, c.ref[i]);
            if (have < c.ref[i]) {
                res->corruptions++;
            } else {
                res->leaks++;
            }
            g_array_append_val(diff, i);
        }
    }
    res->image_end_offset = (int64_t)(highest << s->cluster_bits);
    ret = 0;
    if (fix && res->corruptions && !(fix & CHECK_FIX_ERRORS)) {
        fprintf(stderr, "ERROR need to rebuild refcount structures\n");
        res->check_errors++;
        ret = -EIO;
    } else if (fix && diff->len) {
        /* New refcount blocks must go past every cluster in use. */
        s->free_cluster_index = MAX(s->free_cluster_index, c.n);
        for (int pass = 0; pass < 2; pass++) {
            /* Lowering leaks moved the allocation point down again. */
            s->free_cluster_index = MAX(s->free_cluster_index, c.n);
            for (guint k = 0; k < diff->len; k++) {
                uint64_t i = g_array_index(diff, uint64_t, k), have;
                if (qcow2_get_refcount(bs, i, &have) < 0 ||
                    have == c.ref[i] || (pass == 0) != (have > c.ref[i]) ||
                    !(fix & (have > c.ref[i] ? CHECK_FIX_LEAKS
                                             : CHECK_FIX_ERRORS))) {
                    continue;
                }
                fprintf(stderr, "Repairing cluster %" PRIu64 " refcount=%"
                        PRIu64 " reference=%" PRIu64 "\n", i, have, c.ref[i]);
                int r = qcow2_update_cluster_refcount(
                    bs, i, (int)((int64_t)c.ref[i] - (int64_t)have),
                    QCOW2_DISCARD_NEVER);
                if (r < 0) {
                    res->check_errors++;
                } else if (have > c.ref[i]) {
                    res->leaks_fixed++;
                } else {
                    res->corruptions_fixed++;
                }
            }
        }
        ret = qcow2_cache_flush(s->refcount_cache);
        s->free_cluster_index = 0;
        if (ret < 0) {
            res->check_errors++;
        }
        /* What is left: the problems that could not be fixed. */
        res->leaks -= res->leaks_fixed;
        res->corruptions -= res->corruptions_fixed;
    }
    g_array_free(diff, true);
    if (ret < 0) {
        goto out;
    }
    ret = check_copied(bs, res, fix);
out:
    g_free(c.ref);
    return ret;
}
