/*
 * qcow2 consistency check: count every reference to every cluster of the
 * file from the metadata (header, L1 and L2 tables of the image and its
 * snapshots, the snapshot table, the refcount structures, persistent
 * bitmaps), compare with the stored refcounts, and check that the
 * "copied" flags agree with the refcounts.  Problems are reported to the
 * caller's callback (node_check()) as they are found, one line each in
 * QEMU 7.2's words, and counted as QEMU counts them, so that the report
 * and the exit status of `check` are qemu-img's.
 *
 * Repairs follow QEMU's choices so that a repaired image is the one QEMU
 * would leave: leaks and too-low counts of clusters that have a refcount
 * are corrected in place; anything worse (a cluster in use with refcount
 * 0, a broken refcount table entry) rebuilds the whole refcount structure
 * from the counts (qcow2-check-rebuild.c), and a second pass frees what
 * the old structure leaves behind.  The same repair, with everything
 * enabled, is how an image left dirty by lazy refcounts is opened.
 *
 * Memory: one refcount entry per cluster of the file (as QEMU), plus
 * batches of at most QCOW2_CHECK_BATCH bytes of metadata.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/iov.h"
#include "qcow2-check.h"

/* ---- The in-memory counts ---- */

/* Bytes for n entries, rounded up to whole clusters (rebuild writes them). */
static uint64_t counts_bytes(const Qcow2State *s, int64_t n)
{
    uint64_t bytes = DIV_ROUND_UP(((uint64_t)n << s->refcount_order), 8);
    return ROUND_UP(bytes, s->cluster_size);
}

int qcow2_check_resize_counts(Qcow2Check *c, int64_t n)
{
    uint64_t old_bytes = c->counts ? counts_bytes(c->s, c->nb_clusters) : 0;
    uint64_t new_bytes;
    uint8_t *p;

    /*
     * The check refuses files of more than INT_MAX clusters (as QEMU's);
     * the counts only grow a little past the file (a partly written last
     * cluster, a rebuild's new structure).
     */
    if (n < 0 || n > (int64_t)INT_MAX * 2) {
        return -EFBIG;
    }
    new_bytes = counts_bytes(c->s, n);
    if (new_bytes == old_bytes && c->counts) {
        c->nb_clusters = n;
        return 0;
    }
    if (new_bytes > SIZE_MAX) {
        return -ENOMEM;
    }
    p = g_try_realloc(c->counts, MAX(new_bytes, 1));
    if (!p) {
        return -ENOMEM;
    }
    if (new_bytes > old_bytes) {
        memset(p + old_bytes, 0, new_bytes - old_bytes);
    }
    c->counts = p;
    c->nb_clusters = n;
    return 0;
}

uint64_t qcow2_check_count_get(const Qcow2Check *c, int64_t cluster)
{
    return qcow2_refcount_array_get(c->s, c->counts, (uint64_t)cluster);
}

void qcow2_check_count_set(Qcow2Check *c, int64_t cluster, uint64_t v)
{
    qcow2_refcount_array_set(c->s, c->counts, (uint64_t)cluster, v);
}

int qcow2_check_count_range(Qcow2Check *c, uint64_t offset, uint64_t size)
{
    Qcow2State *s = c->s;
    int ret;

    if (size == 0) {
        return 0;
    }
    /*
     * The last cluster may be only partly in the file, so a reference up
     * to one cluster past the end is fine; anything further is not.
     */
    if (offset > (uint64_t)INT64_MAX - size ||
        (offset + size > (uint64_t)c->file_len &&
         offset + size - (uint64_t)c->file_len >= s->cluster_size)) {
        qcow2_check_report(s, "ERROR: counting reference for region exceeding "
                           "the end of the file by one cluster or more: offset "
                           "0x%" PRIx64 " size 0x%" PRIx64, offset, size);
        c->res->corruptions++;
        return 0;
    }
    int64_t first = (int64_t)(offset >> s->cluster_bits);
    int64_t last = (int64_t)((offset + size - 1) >> s->cluster_bits);
    for (int64_t k = first; k <= last; k++) {
        if (k >= c->nb_clusters) {
            ret = qcow2_check_resize_counts(c, k + 1);
            if (ret < 0) {
                c->res->check_errors++;
                return ret;
            }
        }
        uint64_t n = qcow2_check_count_get(c, k);
        if (n == s->refcount_max) {
            qcow2_check_report(s, "ERROR: overflow cluster offset=0x%" PRIx64,
                               (uint64_t)k << s->cluster_bits);
            qcow2_check_report(s, "Use qemu-img amend to increase the "
                               "refcount entry width or qemu-img convert to "
                               "create a clean copy if the image cannot be "
                               "opened for writing");
            c->res->corruptions++;
            continue;
        }
        qcow2_check_count_set(c, k, n + 1);
    }
    return 0;
}

int64_t qcow2_check_file_length(BlockNode *bs)
{
    /* Writes past the end (a rebuild's) may have grown the file. */
    node_invalidate_length(bs->file->bs);
    return node_getlength(bs->file->bs);
}

/* ---- The stored refcounts, read a batch of refcount blocks at a time ---- */

/*
 * A few windows of contiguous refcount blocks, the least recently loaded
 * replaced first: lookups in order (the comparison) stream through them,
 * lookups that jump between a few regions (copied flags: L2 tables here,
 * data clusters there) keep a window each.
 */
#define STORED_WINDOWS 8
#define STORED_WINDOW_BYTES (64u * 1024)

typedef struct StoredRefs {
    Qcow2Check *c;
    Qcow2TableBatch win[STORED_WINDOWS];
    unsigned next;             /* the window to replace next */
    uint64_t *offsets;         /* refcount block offsets by table index */
} StoredRefs;

/*
 * The refcount blocks are read directly from the file, so the refcount
 * cache must have been written back; repairs made while reading only
 * touch clusters already read.
 */
static int coroutine_fn stored_refs_init(StoredRefs *r, Qcow2Check *c)
{
    Qcow2State *s = c->s;
    int ret = qcow2_cache_flush(s->refcount_cache);

    memset(r, 0, sizeof(*r));
    r->c = c;
    for (unsigned i = 0; i < STORED_WINDOWS; i++) {
        r->win[i].cap = STORED_WINDOW_BYTES;
    }
    if (ret < 0) {
        return ret;
    }
    r->offsets = g_try_new(uint64_t, MAX(s->refcount_table_size, 1));
    if (!r->offsets) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->refcount_table_size; i++) {
        r->offsets[i] = s->refcount_table[i] & REFT_OFFSET_MASK;
    }
    return 0;
}

static void stored_refs_free(StoredRefs *r)
{
    for (unsigned i = 0; i < STORED_WINDOWS; i++) {
        qcow2_check_table_batch_free(&r->win[i]);
    }
    g_free(r->offsets);
    r->offsets = NULL;
}

/* The window holding refcount block rt (aligned, in the table), read if needed. */
static int coroutine_fn stored_block(StoredRefs *r, uint64_t rt, uint8_t **rb)
{
    Qcow2State *s = r->c->s;
    Qcow2TableBatch *w = NULL;

    for (unsigned i = 0; i < STORED_WINDOWS && !w; i++) {
        if (qcow2_check_table_cached(&r->win[i], r->offsets[rt],
                                     s->cluster_size)) {
            w = &r->win[i];
        }
    }
    if (!w) {
        w = &r->win[r->next];
        r->next = (r->next + 1) % STORED_WINDOWS;
        w->len = 0;
    }
    return qcow2_check_table_get(r->c, w, r->offsets, rt,
                                 s->refcount_table_size, rb);
}

static int coroutine_fn stored_refcount(StoredRefs *r, int64_t cluster,
                                        uint64_t *rc)
{
    Qcow2State *s = r->c->s;
    uint64_t rt = (uint64_t)cluster >> s->refcount_block_bits;
    uint8_t *rb;
    int ret;

    *rc = 0;
    if (rt >= s->refcount_table_size || !r->offsets[rt]) {
        return 0;
    }
    if (qcow2_offset_into_cluster(s, r->offsets[rt])) {
        /* The driver's own lookup reports this (and marks the image). */
        return qcow2_get_refcount(r->c->bs, (uint64_t)cluster, rc);
    }
    ret = stored_block(r, rt, &rb);
    if (ret < 0) {
        return ret;
    }
    *rc = qcow2_refcount_array_get(s, rb, (uint64_t)cluster &
                                          (s->refcount_block_size - 1));
    return 0;
}

/*
 * The clusters of one whole refcount block at once, first being its first:
 * the counts keep the on-disk layout, and the counts of a block's clusters
 * are one cluster of bytes, so equal bytes mean equal refcounts.  True
 * then, with *highest raised to the last cluster in use.  False: compare
 * them one by one (the per-cluster path reports every difference, an
 * unaligned block, a read error).  An image whose file is mostly unused
 * (a repair may move the refcount structure far out) is otherwise a
 * lookup per cluster: 2 million for a 1 GiB file of 512-byte clusters.
 */
static bool coroutine_fn block_equal(StoredRefs *r, int64_t first,
                                     int64_t *highest)
{
    Qcow2Check *c = r->c;
    Qcow2State *s = c->s;
    uint64_t rt = (uint64_t)first >> s->refcount_block_bits;
    const uint8_t *want = c->counts + rt * s->cluster_size;
    uint8_t *have = NULL;
    size_t n = s->cluster_size;

    if (rt < s->refcount_table_size && r->offsets[rt] &&
        (qcow2_offset_into_cluster(s, r->offsets[rt]) ||
         stored_block(r, rt, &have) < 0)) {
        return false;
    }
    if (buffer_is_zero(want, n)) {
        return !have || buffer_is_zero(have, n);
    }
    if (!have || memcmp(want, have, n) != 0) {
        return false;
    }
    while (!want[n - 1]) {
        n--;
    }
    /* The last entry touching byte n - 1; one in that byte is not 0. */
    int64_t k = first + (int64_t)DIV_ROUND_UP((uint64_t)n * 8,
                                              1u << s->refcount_order) - 1;
    while (qcow2_check_count_get(c, k) == 0) {
        k--;
    }
    *highest = k;
    return true;
}

/* ---- Counting ---- */

static int coroutine_fn calculate_refcounts(Qcow2Check *c)
{
    Qcow2State *s = c->s;
    BlockCheckResult *res = c->res;
    int ret;

    if (!c->counts) {
        int64_t n = c->nb_clusters;
        c->nb_clusters = 0;
        ret = qcow2_check_resize_counts(c, n);
        if (ret < 0) {
            c->nb_clusters = n;
            res->check_errors++;
            return ret;
        }
    }
    ret = qcow2_check_count_range(c, 0, s->cluster_size);
    if (ret >= 0 && s->crypto_header_length) {
        /* The LUKS header of an encrypted image lives in clusters of its own. */
        ret = qcow2_check_count_range(c, s->crypto_header_offset,
                                      s->crypto_header_length);
    }
    if (ret >= 0) {
        ret = qcow2_check_count_l1(c, s->l1_table_offset, s->l1_size, true);
    }
    if (ret < 0) {
        return ret;
    }
    if (qcow2_has_data_file(s) && s->nb_snapshots) {
        qcow2_check_report(s, "ERROR %" PRIu32 " snapshots in image with data "
                           "file", s->nb_snapshots);
        res->corruptions++;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];

        if (qcow2_offset_into_cluster(s, sn->l1_table_offset)) {
            qcow2_check_report(s, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64
                               ": L1 table is not cluster aligned; snapshot "
                               "table entry corrupted", sn->id_str, sn->name,
                               sn->l1_table_offset);
            res->corruptions++;
            continue;
        }
        if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8) {
            qcow2_check_report(s, "ERROR snapshot %s (%s) l1_size=%#" PRIx32
                               ": L1 table is too large; snapshot table entry "
                               "corrupted", sn->id_str, sn->name, sn->l1_size);
            res->corruptions++;
            continue;
        }
        ret = qcow2_check_count_l1(c, sn->l1_table_offset, sn->l1_size,
                                   false);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_check_count_range(c, s->snapshots_offset, s->snapshots_size);
    if (ret >= 0) {
        ret = qcow2_check_count_range(c, s->refcount_table_offset,
                                      (uint64_t)s->refcount_table_size * 8);
    }
    if (ret >= 0) {
        ret = qcow2_check_count_bitmaps(c);
    }
    if (ret >= 0) {
        ret = qcow2_check_count_refblocks(c);
    }
    return ret;
}

/*
 * Stored against counted refcount, cluster by cluster.  fix: what may be
 * corrected in place (a cluster in use with no refcount at all needs a
 * rebuild instead).
 */
static int coroutine_fn compare_refcounts(Qcow2Check *c, int fix,
                                          int64_t *highest)
{
    Qcow2State *s = c->s;
    BlockCheckResult *res = c->res;
    StoredRefs r;
    int ret = stored_refs_init(&r, c);

    *highest = 0;
    if (ret < 0) {
        res->check_errors++;
        stored_refs_free(&r);
        return ret;
    }
    for (int64_t i = 0; i < c->nb_clusters; i++) {
        uint64_t have, want;

        if (!(i & (s->refcount_block_size - 1)) &&
            c->nb_clusters - i >= (int64_t)s->refcount_block_size &&
            block_equal(&r, i, highest)) {
            i += s->refcount_block_size - 1;
            continue;
        }
        want = qcow2_check_count_get(c, i);
        ret = stored_refcount(&r, i, &have);
        if (ret < 0) {
            qcow2_check_report(s, "Can't get refcount for cluster %" PRId64
                               ": %s", i, g_strerror(-ret));
            res->check_errors++;
            continue;
        }
        if (have || want) {
            *highest = i;
        }
        if (have == want) {
            continue;
        }
        int64_t *fixed = NULL;
        if (have == 0) {
            c->rebuild = true;
        } else if (have > want && (fix & CHECK_FIX_LEAKS)) {
            fixed = &res->leaks_fixed;
        } else if (have < want && (fix & CHECK_FIX_ERRORS)) {
            fixed = &res->corruptions_fixed;
        }
        qcow2_check_report(s, "%s cluster %" PRId64 " refcount=%" PRIu64 " "
                           "reference=%" PRIu64,
                           fixed ? "Repairing"
                           : have < want ? "ERROR" : "Leaked",
                           i, have, want);
        if (fixed) {
            ret = qcow2_update_refcount_range(
                c->bs, (uint64_t)i << s->cluster_bits, s->cluster_size,
                have > want ? have - want : want - have, have > want,
                QCOW2_DISCARD_ALWAYS);
            if (ret >= 0) {
                (*fixed)++;
                continue;
            }
        }
        if (have < want) {
            res->corruptions++;
        } else {
            res->leaks++;
        }
    }
    stored_refs_free(&r);
    if (fix) {
        ret = qcow2_cache_flush(s->refcount_cache);
        if (ret < 0) {
            res->check_errors++;
            return ret;
        }
    }
    return 0;
}

/* ---- Copied flags ---- */

/*
 * The copied flag must be set exactly where the refcount is 1: on the
 * active L1 entries and on the data clusters of the active L2 tables.
 * A refcount that cannot be read was reported already: skipped quietly.
 */
static int coroutine_fn check_copied(Qcow2Check *c)
{
    Qcow2State *s = c->s;
    BlockCheckResult *res = c->res;
    Qcow2TableBatch batch = { 0 };
    StoredRefs r;
    uint64_t *l2_offsets = NULL;
    size_t n = 0, k = 0;
    bool repair;
    int ret;

    if (c->fix & CHECK_FIX_ERRORS) {
        repair = true;
    } else if (c->fix & CHECK_FIX_LEAKS) {
        /* Only when the refcounts are known to be right now. */
        repair = !res->check_errors && !res->corruptions && !res->leaks;
    } else {
        repair = false;
    }
    ret = stored_refs_init(&r, c);
    if (ret < 0) {
        res->check_errors++;
        goto out;
    }
    l2_offsets = g_try_new(uint64_t, MAX(s->l1_size, 1));
    if (!l2_offsets) {
        res->check_errors++;
        ret = -ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        if (s->l1_table[i] & L1E_OFFSET_MASK) {
            l2_offsets[n++] = s->l1_table[i] & L1E_OFFSET_MASK;
        }
    }

    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l1e = s->l1_table[i], l2_offset = l1e & L1E_OFFSET_MASK, rc;
        unsigned dirty = 0;
        uint8_t *l2;

        if (!l2_offset) {
            continue;
        }
        size_t batch_index = k++;
        ret = stored_refcount(&r, (int64_t)(l2_offset >> s->cluster_bits),
                              &rc);
        if (ret >= 0 && (rc == 1) != !!(l1e & QCOW_OFLAG_COPIED)) {
            res->corruptions++;
            qcow2_check_report(s, "%s OFLAG_COPIED L2 cluster: l1_index=%"
                               PRIu32 " l1_entry=%" PRIx64 " refcount=%" PRIu64,
                               repair ? "Repairing" : "ERROR", i, l1e, rc);
            if (repair) {
                uint64_t be;
                s->l1_table[i] = rc == 1 ? l1e | QCOW_OFLAG_COPIED
                                         : l1e & ~QCOW_OFLAG_COPIED;
                be = htobe64(s->l1_table[i]);
                ret = qcow2_check_overlap(c->bs, QCOW2_OL_ACTIVE_L1,
                                          s->l1_table_offset + i * 8ull, 8);
                if (ret >= 0) {
                    ret = child_co_pwrite(c->bs->file,
                                          (int64_t)(s->l1_table_offset +
                                                    i * 8ull), 8, &be, 0);
                }
                if (ret < 0) {
                    res->check_errors++;
                    goto out;
                }
                res->corruptions--;
                res->corruptions_fixed++;
            }
        }
        if (ret < 0) {
            continue;
        }

        ret = qcow2_check_table_get(c, &batch, l2_offsets, batch_index, n,
                                    &l2);
        if (ret < 0) {
            qcow2_check_report(s, "ERROR: Could not read L2 table: %s",
                               g_strerror(-ret));
            res->check_errors++;
            goto out;
        }
        for (unsigned j = 0; j < s->l2_size; j++) {
            uint64_t e = qcow2_l2_entry(s, l2, j);
            uint64_t host = e & L2E_OFFSET_MASK;
            bool normal;

            if (e & QCOW_OFLAG_COMPRESSED) {
                continue;
            }
            if ((e & QCOW_OFLAG_ZERO) && !s->extended_l2) {
                normal = host != 0;                 /* preallocated zero */
            } else {
                normal = host || (qcow2_has_data_file(s) &&
                                  (e & QCOW_OFLAG_COPIED));
            }
            if (!normal) {
                continue;
            }
            if (qcow2_has_data_file(s)) {
                rc = 1;
            } else if (stored_refcount(&r, (int64_t)(host >> s->cluster_bits),
                                       &rc) < 0) {
                continue;
            }
            if ((rc == 1) != !!(e & QCOW_OFLAG_COPIED)) {
                res->corruptions++;
                qcow2_check_report(s, "%s OFLAG_COPIED data cluster: l2_entry=%"
                                   PRIx64 " refcount=%" PRIu64,
                                   repair ? "Repairing" : "ERROR", e, rc);
                if (repair) {
                    qcow2_set_l2_entry(s, l2, j, rc == 1
                                       ? e | QCOW_OFLAG_COPIED
                                       : e & ~QCOW_OFLAG_COPIED);
                    dirty++;
                }
            }
        }
        if (dirty) {
            ret = qcow2_check_overlap(c->bs, QCOW2_OL_ACTIVE_L2, l2_offset,
                                      s->cluster_size);
            if (ret < 0) {
                qcow2_check_report(s, "ERROR: Could not write L2 table; "
                                   "metadata overlap check failed: %s",
                                   g_strerror(-ret));
                res->check_errors++;
                goto out;
            }
            ret = child_co_pwrite(c->bs->file, (int64_t)l2_offset,
                                  (int64_t)s->cluster_size, l2, 0);
            if (ret < 0) {
                qcow2_check_report(s, "ERROR: Could not write L2 table: %s",
                                   g_strerror(-ret));
                res->check_errors++;
                goto out;
            }
            qcow2_cache_discard(s->l2_cache, l2_offset);
            res->corruptions -= dirty;
            res->corruptions_fixed += dirty;
        }
    }
    ret = 0;
out:
    qcow2_check_table_batch_free(&batch);
    stored_refs_free(&r);
    g_free(l2_offsets);
    return ret;
}

/* ---- The refcount check ---- */

static int coroutine_fn check_refcounts(BlockNode *bs, BlockCheckResult *res,
                                        int fix)
{
    Qcow2State *s = bs->opaque;
    Qcow2Check c = { .bs = bs, .s = s, .res = res, .fix = fix };
    BlockCheckResult pre_compare;
    int64_t highest = 0;
    int ret;

    c.file_len = qcow2_check_file_length(bs);
    if (c.file_len < 0) {
        res->check_errors++;
        return (int)c.file_len;
    }
    c.nb_clusters = (int64_t)qcow2_size_to_clusters(s, (uint64_t)c.file_len);
    if (c.nb_clusters > INT_MAX) {
        res->check_errors++;
        return -EFBIG;
    }
    res->total_clusters = (int64_t)DIV_ROUND_UP(s->size, s->cluster_size);

    /* Metadata is read from the file: the caches must be written back. */
    ret = qcow2_cache_flush(s->l2_cache);
    if (ret >= 0) {
        ret = qcow2_cache_flush(s->refcount_cache);
    }
    if (ret < 0) {
        res->check_errors++;
        return ret;
    }
    qcow2_cache_empty(s->l2_cache);

    ret = calculate_refcounts(&c);
    if (ret < 0) {
        goto out;
    }
    /* When only in-place fixes are needed, the comparison runs again. */
    pre_compare = *res;
    ret = compare_refcounts(&c, 0, &highest);
    if (ret < 0) {
        goto out;
    }

    if (c.rebuild && (fix & CHECK_FIX_ERRORS)) {
        BlockCheckResult old = *res;
        int64_t fresh_leaks = 0;
        GError *err = NULL;

        qcow2_check_report(s, "Rebuilding refcount structure");
        ret = qcow2_check_rebuild_refcounts(&c, &err);
        if (ret < 0) {
            qcow2_check_report_error(s, "%s", err->message);
            g_error_free(err);
            goto out;
        }
        res->corruptions = 0;
        res->leaks = 0;
        /* The new structure may have extended the file. */
        c.file_len = qcow2_check_file_length(bs);
        if (c.file_len < 0) {
            ret = (int)c.file_len;
            res->check_errors++;
            goto out;
        }
        /* The new structure is counted now, the old one is not. */
        c.rebuild = false;
        memset(c.counts, 0, counts_bytes(s, c.nb_clusters));
        c.fix = 0;
        ret = calculate_refcounts(&c);
        c.fix = fix;
        if (ret < 0) {
            goto out;
        }
        if (fix & CHECK_FIX_LEAKS) {
            /* Free the old structure; only leaks the rebuild made count. */
            BlockCheckResult saved = *res;
            memset(res, 0, sizeof(*res));
            ret = compare_refcounts(&c, CHECK_FIX_LEAKS, &highest);
            if (c.rebuild) {
                qcow2_check_report(s, "ERROR rebuilt refcount structure is "
                                   "still broken");
            }
            fresh_leaks = res->leaks;
            *res = saved;
            if (ret < 0) {
                res->check_errors++;
                goto out;
            }
        }
        if (res->corruptions < old.corruptions) {
            res->corruptions_fixed += old.corruptions - res->corruptions;
        }
        if (res->leaks < old.leaks) {
            res->leaks_fixed += old.leaks - res->leaks;
        }
        res->leaks += fresh_leaks;
    } else if (fix) {
        if (c.rebuild) {
            qcow2_check_report(s, "ERROR need to rebuild refcount structures");
            res->check_errors++;
            ret = -EIO;
            goto out;
        }
        if (res->leaks || res->corruptions) {
            *res = pre_compare;
            ret = compare_refcounts(&c, fix, &highest);
            if (ret < 0) {
                goto out;
            }
        }
    }

    ret = check_copied(&c);
    if (ret < 0) {
        goto out;
    }
    res->image_end_offset = (highest + 1) << s->cluster_bits;
    ret = 0;
out:
    g_free(c.counts);
    return ret;
}

static void add_result(BlockCheckResult *out, const BlockCheckResult *in,
                       bool allocation_info)
{
    out->corruptions += in->corruptions;
    out->leaks += in->leaks;
    out->check_errors += in->check_errors;
    out->corruptions_fixed += in->corruptions_fixed;
    out->leaks_fixed += in->leaks_fixed;
    if (allocation_info) {
        out->image_end_offset = in->image_end_offset;
        out->total_clusters = in->total_clusters;
        out->allocated_clusters = in->allocated_clusters;
        out->fragmented_clusters = in->fragmented_clusters;
        out->compressed_clusters = in->compressed_clusters;
    }
}

static void vreport(Qcow2State *s, const char *prefix, const char *fmt,
                    va_list ap)
{
    char *msg = g_strdup_vprintf(fmt, ap);
    char *line = g_strconcat(prefix, msg, NULL);

    if (s->check_report) {
        s->check_report(s->check_report_opaque, line);
    } else {
        warn_print("%s", line);
    }
    g_free(line);
    g_free(msg);
}

void qcow2_check_report(Qcow2State *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(s, "", fmt, ap);
    va_end(ap);
}

void qcow2_check_report_error(Qcow2State *s, const char *fmt, ...)
{
    const char *prog = g_get_prgname();
    char *prefix = g_strconcat(prog ? prog : "qemu-img", ": ", NULL);
    va_list ap;
    va_start(ap, fmt);
    vreport(s, prefix, fmt, ap);
    va_end(ap);
    g_free(prefix);
}

static int coroutine_fn check_locked(BlockNode *bs, BlockCheckResult *res,
                                     int fix)
{
    BlockCheckResult sn_res = { 0 }, rc_res = { 0 };
    int ret;

    memset(res, 0, sizeof(*res));
    ret = qcow2_check_read_snapshots(bs, &sn_res, fix);
    if (ret < 0) {
        add_result(res, &sn_res, false);
        return ret;
    }
    ret = check_refcounts(bs, &rc_res, fix);
    add_result(res, &rc_res, true);
    if (ret < 0) {
        add_result(res, &sn_res, false);
        return ret;
    }
    ret = qcow2_check_fix_snapshots(bs, &sn_res, fix);
    add_result(res, &sn_res, false);
    return ret;
}

int coroutine_fn qcow2_co_check_locked(BlockNode *bs, BlockCheckResult *res,
                                       int fix, NodeCheckReport *report,
                                       void *opaque)
{
    Qcow2State *s = bs->opaque;

    s->check_report = report;
    s->check_report_opaque = opaque;
    int ret = check_locked(bs, res, fix);
    s->check_report = NULL;
    s->check_report_opaque = NULL;
    return ret;
}
