/*
 * qcow2 check: walking the metadata that references clusters (L1 and L2
 * tables, refcount blocks, persistent bitmaps) and counting every
 * reference, with the per-entry checks and messages of QEMU 7.2's check.
 *
 * Tables are read in batches of contiguous clusters (an image's L2 tables
 * and refcount blocks are mostly laid out one after the other), so that a
 * large image costs a few large reads rather than one read per table.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2-check.h"

/* ---- Batched table reads ---- */

int coroutine_fn qcow2_check_table_get(Qcow2Check *c, Qcow2TableBatch *b,
                                       const uint64_t *offsets, size_t i,
                                       size_t n, uint8_t **table)
{
    uint64_t cs = c->s->cluster_size, want = offsets[i];
    uint64_t cap = MAX(b->cap ? b->cap : QCOW2_CHECK_BATCH, cs);
    int ret;

    if (qcow2_check_table_cached(b, want, cs)) {
        *table = b->buf + (want - b->first);
        return 0;
    }
    if (!b->buf) {
        if (posix_memalign((void **)&b->buf, 4096, cap) != 0) {
            b->buf = NULL;
            return -ENOMEM;
        }
    }
    uint64_t end = want + cs;
    for (size_t j = i + 1; j < n && offsets[j] == end && end - want < cap;
         j++) {
        end += cs;
    }
    b->len = 0;
    ret = child_co_pread(c->bs->file, (int64_t)want, (int64_t)(end - want),
                         b->buf, 0);
    if (ret < 0) {
        return ret;
    }
    b->first = want;
    b->len = end - want;
    *table = b->buf;
    return 0;
}

void qcow2_check_table_batch_free(Qcow2TableBatch *b)
{
    free(b->buf);
    b->buf = NULL;
    b->len = 0;
}

/* ---- L1 and L2 tables ---- */

/*
 * Make entry i of the L2 table at l2_offset read as zeroes without a
 * host cluster (for an unaligned preallocated zero cluster).  On success
 * the corruption counted by the caller becomes a fixed one.
 */
static int coroutine_fn zero_l2_entry(Qcow2Check *c, uint64_t l2_offset,
                                      uint8_t *l2, unsigned i, bool active,
                                      bool *overlap)
{
    Qcow2State *s = c->s;
    uint64_t entry_offset = l2_offset + (uint64_t)i * s->l2_entry_size;
    int ret;

    if (s->extended_l2) {
        uint64_t bitmap = qcow2_l2_bitmap(s, l2, i);
        /* Allocated subclusters become zero ones. */
        bitmap = (bitmap | (bitmap << 32)) & QCOW_L2_BITMAP_ALL_ZEROES;
        qcow2_set_l2_bitmap(s, l2, i, bitmap);
        qcow2_set_l2_entry(s, l2, i, 0);
    } else {
        qcow2_set_l2_entry(s, l2, i, QCOW_OFLAG_ZERO);
    }
    ret = qcow2_check_overlap(c->bs, active ? QCOW2_OL_ACTIVE_L2
                                            : QCOW2_OL_INACTIVE_L2,
                              entry_offset, s->l2_entry_size);
    *overlap = ret < 0;
    if (ret < 0) {
        qcow2_check_report(s, "ERROR: Overlap check failed");
        goto fail;
    }
    ret = child_co_pwrite(c->bs->file, (int64_t)entry_offset,
                          s->l2_entry_size, l2 + (uint64_t)i * s->l2_entry_size,
                          0);
    if (ret >= 0) {
        ret = node_co_flush(c->bs->file->bs);
    }
    if (ret < 0) {
        qcow2_check_report(s, "ERROR: Failed to overwrite L2 table entry: %s",
                           g_strerror(-ret));
        goto fail;
    }
    c->res->corruptions--;
    c->res->corruptions_fixed++;
    return 0;

fail:
    c->res->check_errors++;
    return ret;
}

/* QEMU's cluster types, as the check sees an L2 entry. */
typedef enum {
    CT_UNALLOCATED, CT_ZERO_PLAIN, CT_ZERO_ALLOC, CT_NORMAL, CT_COMPRESSED,
} ClusterType;

static ClusterType cluster_type(const Qcow2State *s, uint64_t e)
{
    if (e & QCOW_OFLAG_COMPRESSED) {
        return CT_COMPRESSED;
    }
    if ((e & QCOW_OFLAG_ZERO) && !s->extended_l2) {
        return (e & L2E_OFFSET_MASK) ? CT_ZERO_ALLOC : CT_ZERO_PLAIN;
    }
    if (!(e & L2E_OFFSET_MASK)) {
        /* With a data file, offset 0 is a real cluster if marked copied. */
        return qcow2_has_data_file(s) && (e & QCOW_OFLAG_COPIED)
               ? CT_NORMAL : CT_UNALLOCATED;
    }
    return CT_NORMAL;
}

static int coroutine_fn count_l2(Qcow2Check *c, uint64_t l2_offset,
                                 uint8_t *l2, bool active)
{
    Qcow2State *s = c->s;
    BlockCheckResult *res = c->res;
    uint64_t next_contiguous = 0;
    int ret;

    for (unsigned i = 0; i < s->l2_size; i++) {
        uint64_t e = qcow2_l2_entry(s, l2, i);
        uint64_t bitmap = qcow2_l2_bitmap(s, l2, i);
        ClusterType type = cluster_type(s, e);

        if (type != CT_COMPRESSED && (e & L2E_STD_RESERVED_MASK)) {
            qcow2_check_report(s, "ERROR found l2 entry with reserved bits "
                               "set: %" PRIx64, e);
            res->corruptions++;
        }
        switch (type) {
        case CT_COMPRESSED: {
            if (e & QCOW_OFLAG_COPIED) {
                qcow2_check_report(s, "ERROR: coffset=0x%" PRIx64 ": copied "
                                   "flag must never be set for compressed "
                                   "clusters", e & s->cluster_offset_mask);
                e &= ~QCOW_OFLAG_COPIED;
                res->corruptions++;
            }
            if (qcow2_has_data_file(s)) {
                qcow2_check_report(s, "ERROR compressed cluster %u with data "
                                   "file, entry=0x%" PRIx64, i, e);
                res->corruptions++;
                break;
            }
            if (bitmap) {
                qcow2_check_report(s, "ERROR compressed cluster %u with "
                                   "non-zero subcluster allocation bitmap, "
                                   "entry=0x%" PRIx64, i, e);
                res->corruptions++;
                break;
            }
            uint64_t coffset = e & s->cluster_offset_mask;
            uint64_t nb = ((e >> s->csize_shift) & s->csize_mask) + 1;
            uint64_t csize = nb * QCOW2_COMPRESSED_SECTOR_SIZE -
                             (coffset & (QCOW2_COMPRESSED_SECTOR_SIZE - 1));
            ret = qcow2_check_count_range(c, coffset, csize);
            if (ret < 0) {
                return ret;
            }
            if (active) {
                /* Compressed clusters are fragmented by nature. */
                res->allocated_clusters++;
                res->compressed_clusters++;
                res->fragmented_clusters++;
            }
            break;
        }
        case CT_ZERO_ALLOC:
        case CT_NORMAL: {
            uint64_t offset = e & L2E_OFFSET_MASK;

            if ((bitmap >> 32) & bitmap) {
                res->corruptions++;
                qcow2_check_report(s, "ERROR offset=%" PRIx64 ": Allocated "
                                   "cluster has corrupted subcluster "
                                   "allocation bitmap", offset);
            }
            if (qcow2_offset_into_cluster(s, offset)) {
                bool has_data = s->extended_l2
                                ? (bitmap & QCOW_L2_BITMAP_ALL_ALLOC) != 0
                                : !(e & QCOW_OFLAG_ZERO);
                res->corruptions++;
                if (has_data) {
                    qcow2_check_report(s, "ERROR offset=%" PRIx64 ": Data "
                                       "cluster is not properly aligned; L2 "
                                       "entry corrupted.", offset);
                } else {
                    bool fix = c->fix & CHECK_FIX_ERRORS;
                    qcow2_check_report(s, "%s offset=%" PRIx64 ": "
                                       "Preallocated cluster is not properly "
                                       "aligned; L2 entry corrupted.",
                                       fix ? "Repairing" : "ERROR", offset);
                    if (fix) {
                        bool overlap;
                        ret = zero_l2_entry(c, l2_offset, l2, i, active,
                                            &overlap);
                        if (overlap) {
                            return ret;   /* something is badly wrong */
                        }
                        if (ret == 0) {
                            continue;     /* no cluster any more */
                        }
                    }
                }
            }
            if (active) {
                res->allocated_clusters++;
                if (next_contiguous && offset != next_contiguous) {
                    res->fragmented_clusters++;
                }
                next_contiguous = offset + s->cluster_size;
            }
            if (!qcow2_has_data_file(s)) {
                ret = qcow2_check_count_range(c, offset, s->cluster_size);
                if (ret < 0) {
                    return ret;
                }
            }
            break;
        }
        case CT_ZERO_PLAIN:
            break;
        case CT_UNALLOCATED:
            if (bitmap & QCOW_L2_BITMAP_ALL_ALLOC) {
                res->corruptions++;
                qcow2_check_report(s, "ERROR: Unallocated cluster has "
                                   "non-zero subcluster allocation map");
            }
            break;
        }
    }
    return 0;
}

int coroutine_fn qcow2_check_count_l1(Qcow2Check *c, uint64_t l1_offset,
                                      uint32_t l1_size, bool active)
{
    Qcow2State *s = c->s;
    BlockCheckResult *res = c->res;
    Qcow2TableBatch batch = { 0 };
    uint64_t *l1;
    int ret;

    if (!l1_size) {
        return 0;
    }
    ret = qcow2_check_count_range(c, l1_offset, (uint64_t)l1_size * 8);
    if (ret < 0) {
        return ret;
    }
    /* l1_size is at most QEMU's 32 MiB limit here (checked by callers). */
    l1 = g_try_new(uint64_t, l1_size);
    if (!l1) {
        res->check_errors++;
        return -ENOMEM;
    }
    ret = child_co_pread(c->bs->file, (int64_t)l1_offset,
                         (int64_t)l1_size * 8, l1, 0);
    if (ret < 0) {
        qcow2_check_report(s, "ERROR: I/O error in check_refcounts_l1");
        res->check_errors++;
        goto out;
    }
    /* The L2 offsets of the non-empty entries, in order, for batching. */
    size_t n = 0;
    for (uint32_t i = 0; i < l1_size; i++) {
        l1[i] = be64toh(l1[i]);
        if (l1[i]) {
            n++;
        }
    }
    uint64_t *l2_offsets = g_try_new(uint64_t, MAX(n, 1));
    if (!l2_offsets) {
        res->check_errors++;
        ret = -ENOMEM;
        goto out;
    }
    n = 0;
    for (uint32_t i = 0; i < l1_size; i++) {
        if (l1[i]) {
            l2_offsets[n++] = l1[i] & L1E_OFFSET_MASK;
        }
    }

    size_t k = 0;
    for (uint32_t i = 0; i < l1_size; i++) {
        if (!l1[i]) {
            continue;
        }
        if (l1[i] & L1E_RESERVED_MASK) {
            qcow2_check_report(s, "ERROR found L1 entry with reserved bits "
                               "set: %" PRIx64, l1[i]);
            res->corruptions++;
        }
        uint64_t l2_offset = l1[i] & L1E_OFFSET_MASK;
        ret = qcow2_check_count_range(c, l2_offset, s->cluster_size);
        if (ret < 0) {
            break;
        }
        if (qcow2_offset_into_cluster(s, l2_offset)) {
            qcow2_check_report(s, "ERROR l2_offset=%" PRIx64 ": Table is not "
                               "cluster aligned; L1 entry corrupted",
                               l2_offset);
            res->corruptions++;
        }
        uint8_t *l2;
        ret = qcow2_check_table_get(c, &batch, l2_offsets, k++, n, &l2);
        if (ret < 0) {
            qcow2_check_report(s, "ERROR: I/O error in check_refcounts_l2");
            res->check_errors++;
            break;
        }
        ret = count_l2(c, l2_offset, l2, active);
        if (ret < 0) {
            break;
        }
    }
    g_free(l2_offsets);
out:
    qcow2_check_table_batch_free(&batch);
    g_free(l1);
    return ret < 0 ? ret : 0;
}

/* ---- Refcount blocks ---- */

int coroutine_fn qcow2_check_count_refblocks(Qcow2Check *c)
{
    Qcow2State *s = c->s;
    BlockCheckResult *res = c->res;
    int ret;

    for (uint32_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t offset = s->refcount_table[i] & REFT_OFFSET_MASK;
        uint64_t cluster = offset >> s->cluster_bits;

        if (s->refcount_table[i] & REFT_RESERVED_MASK) {
            qcow2_check_report(s, "ERROR refcount table entry %" PRIu32 " has "
                               "reserved bits set", i);
            res->corruptions++;
            c->rebuild = true;
            continue;
        }
        if (qcow2_offset_into_cluster(s, offset)) {
            qcow2_check_report(s, "ERROR refcount block %" PRIu32 " is not "
                               "cluster aligned; refcount table entry "
                               "corrupted", i);
            res->corruptions++;
            c->rebuild = true;
            continue;
        }
        if (cluster >= (uint64_t)c->nb_clusters) {
            bool fix = c->fix & CHECK_FIX_ERRORS;
            res->corruptions++;
            qcow2_check_report(s, "%s refcount block %" PRIu32 " is outside "
                               "image", fix ? "Repairing" : "ERROR", i);
            if (!fix) {
                continue;
            }
            /* Grow the file to hold the block (it reads as zeroes). */
            GError *err = NULL;
            /*
             * A block just past the end (the file was cut short) is what
             * this repairs.  Unlike QEMU, a garbage entry far away does
             * not grow the file (and the counts in memory) to match: not
             * past twice the file plus 1 GiB, nor INT_MAX clusters (what
             * a check accepts).
             */
            ret = -EFBIG;
            if (cluster < INT_MAX &&
                offset < (uint64_t)c->file_len * 2 + (UINT64_C(1) << 30)) {
                ret = child_co_truncate(c->bs->file,
                                        (int64_t)(offset + s->cluster_size),
                                        false, PREALLOC_MODE_OFF, &err);
                if (ret < 0) {
                    qcow2_check_report_error(s, "%s", err->message);
                    g_clear_error(&err);
                }
            }
            if (ret >= 0) {
                int64_t len = qcow2_check_file_length(c->bs);
                ret = len < 0 ? (int)len : 0;
                if (ret >= 0) {
                    c->file_len = len;
                    ret = qcow2_check_resize_counts(
                        c, (int64_t)qcow2_size_to_clusters(s, (uint64_t)len));
                    if (ret < 0) {
                        res->check_errors++;
                        return ret;
                    }
                    if (cluster >= (uint64_t)c->nb_clusters) {
                        ret = -EINVAL;
                    }
                }
            }
            if (ret < 0) {
                c->rebuild = true;
                qcow2_check_report(s, "ERROR could not resize image: %s",
                                   g_strerror(-ret));
                continue;
            }
            res->corruptions--;
            res->corruptions_fixed++;
            ret = qcow2_check_count_range(c, offset, s->cluster_size);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        if (offset) {
            ret = qcow2_check_count_range(c, offset, s->cluster_size);
            if (ret < 0) {
                return ret;
            }
            uint64_t n = qcow2_check_count_get(c, (int64_t)cluster);
            if (n != 1) {
                qcow2_check_report(s, "ERROR refcount block %" PRIu32 " "
                                   "refcount=%" PRIu64, i, n);
                res->corruptions++;
                c->rebuild = true;
            }
        }
    }
    return 0;
}

/* ---- Persistent bitmaps ---- */

/* QEMU's limits for the bitmap directory and a bitmap table. */
#define BITMAP_DIR_MAX_BYTES (64u * 1024 * 1024)
#define BITMAP_TABLE_MAX_ENTRIES 0x8000000u
#define BME_RESERVED_MASK UINT64_C(0xff000000000001fe)

int coroutine_fn qcow2_check_count_bitmaps(Qcow2Check *c)
{
    Qcow2State *s = c->s;
    uint64_t dir_offset = s->bitmaps_ext.bitmap_directory_offset;
    uint64_t dir_size = s->bitmaps_ext.bitmap_directory_size;
    uint8_t *dir;
    int ret;

    if (!s->has_bitmaps_ext || s->bitmaps_ext.nb_bitmaps == 0) {
        return 0;
    }
    ret = qcow2_check_count_range(c, dir_offset, dir_size);
    if (ret < 0) {
        return ret;
    }
    if (dir_size == 0 || dir_size > BITMAP_DIR_MAX_BYTES ||
        dir_size > (uint64_t)c->file_len ||
        qcow2_offset_into_cluster(s, dir_offset)) {
        c->res->corruptions++;
        return -EINVAL;
    }
    dir = g_try_malloc(dir_size);
    if (!dir) {
        c->res->check_errors++;
        return -ENOMEM;
    }
    ret = child_co_pread(c->bs->file, (int64_t)dir_offset, (int64_t)dir_size,
                         dir, 0);
    if (ret < 0) {
        c->res->corruptions++;
        goto out;
    }
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

        ret = qcow2_check_count_range(c, table_offset,
                                      (uint64_t)table_size * 8);
        if (ret < 0) {
            goto out;
        }
        if (table_size > BITMAP_TABLE_MAX_ENTRIES ||
            (uint64_t)table_size * 8 > (uint64_t)c->file_len ||
            qcow2_offset_into_cluster(s, table_offset)) {
            c->res->corruptions++;
            ret = -EINVAL;
            goto out;
        }
        uint64_t *t = g_try_new(uint64_t, MAX(table_size, 1));
        if (!t) {
            c->res->check_errors++;
            ret = -ENOMEM;
            goto out;
        }
        ret = child_co_pread(c->bs->file, (int64_t)table_offset,
                             (int64_t)table_size * 8, t, 0);
        if (ret < 0) {
            c->res->corruptions++;
            g_free(t);
            goto out;
        }
        for (uint32_t j = 0; j < table_size && ret >= 0; j++) {
            uint64_t e = be64toh(t[j]), d = e & L2E_OFFSET_MASK;
            /* With an offset, bit 0 ("all ones") is reserved. */
            if ((e & BME_RESERVED_MASK) ||
                (d && ((e & 1) || qcow2_offset_into_cluster(s, d)))) {
                c->res->corruptions++;
                continue;
            }
            if (d) {
                ret = qcow2_check_count_range(c, d, s->cluster_size);
            }
        }
        g_free(t);
        if (ret < 0) {
            goto out;
        }
    }
    ret = 0;
out:
    g_free(dir);
    return ret;
}
