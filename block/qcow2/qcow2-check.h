/*
 * The qcow2 check, shared between its files (private to them):
 *
 *   qcow2-check.c          the entry point: counting, comparing, repairing
 *   qcow2-check-tables.c   walking L1/L2 tables, refcount blocks, bitmaps
 *   qcow2-check-rebuild.c  writing a new refcount structure from the counts
 *   qcow2-check-snapshots.c reading (and repairing) the snapshot table
 *
 * The counts are kept in memory in the image's own refcount block format
 * (the same width, big endian), so that a rebuild can write slices of the
 * array to disk as refcount blocks: one entry per cluster of the file.
 * Every size taken from the image is checked against the file and QEMU's
 * limits before memory is allocated for it.
 */
#ifndef STRATA_QCOW2_CHECK_H
#define STRATA_QCOW2_CHECK_H

#include "qcow2.h"

/* Metadata is read in runs of contiguous tables up to this many bytes. */
#define QCOW2_CHECK_BATCH (1u << 20)

typedef struct Qcow2Check {
    BlockNode *bs;
    Qcow2State *s;
    BlockCheckResult *res;
    int fix;                   /* CHECK_FIX_* */
    uint8_t *counts;           /* one entry per cluster, refcount format */
    int64_t nb_clusters;       /* entries in counts */
    int64_t file_len;
    bool rebuild;              /* the refcount structure must be rebuilt */
} Qcow2Check;

/* The length of the image file now (not a cached one). */
int64_t qcow2_check_file_length(BlockNode *bs);

/* Make room for n entries (new ones zero); -ENOMEM leaves c unchanged. */
int qcow2_check_resize_counts(Qcow2Check *c, int64_t n);
uint64_t qcow2_check_count_get(const Qcow2Check *c, int64_t cluster);
void qcow2_check_count_set(Qcow2Check *c, int64_t cluster, uint64_t v);

/*
 * One more reference to every cluster of [offset, offset + size):
 * a region one cluster or more past the end of the file is a corruption
 * (reported, not counted); a count at its maximum is an overflow.
 */
int qcow2_check_count_range(Qcow2Check *c, uint64_t offset, uint64_t size);

/* ---- qcow2-check-tables.c ---- */

/* An L1 table, its L2 tables and their clusters (frag: the active one). */
int coroutine_fn qcow2_check_count_l1(Qcow2Check *c, uint64_t l1_offset,
                                      uint32_t l1_size, bool active);
/* The refcount blocks: each must be valid and referenced exactly once. */
int coroutine_fn qcow2_check_count_refblocks(Qcow2Check *c);
/* Persistent bitmaps: the directory, each table and its clusters. */
int coroutine_fn qcow2_check_count_bitmaps(Qcow2Check *c);

/*
 * Reads tables of one cluster each at the given offsets, joining
 * contiguous ones into one request of at most QCOW2_CHECK_BATCH bytes.
 */
typedef struct Qcow2TableBatch {
    uint8_t *buf;
    uint64_t first;            /* file offset of buf */
    uint64_t len;              /* bytes loaded, 0: none */
    uint64_t cap;              /* at most this much (0: QCOW2_CHECK_BATCH) */
} Qcow2TableBatch;

/* Is the table at offset in the batch already? */
static inline bool qcow2_check_table_cached(const Qcow2TableBatch *b,
                                            uint64_t offset,
                                            uint64_t cluster_size)
{
    return b->len && offset >= b->first &&
           offset - b->first <= b->len - cluster_size;
}

/*
 * Make the table at offsets[i] available; offsets[i..n) are the tables
 * the caller will want next, in order.  *table points into the batch.
 */
int coroutine_fn qcow2_check_table_get(Qcow2Check *c, Qcow2TableBatch *b,
                                       const uint64_t *offsets, size_t i,
                                       size_t n, uint8_t **table);
void qcow2_check_table_batch_free(Qcow2TableBatch *b);

/* ---- qcow2-check-rebuild.c ---- */

/*
 * Write a new refcount structure (blocks and table) holding c->counts,
 * allocating its clusters in c->counts, and switch the header to it.
 * The old structure is leaked (the caller's second pass frees it).
 */
int coroutine_fn qcow2_check_rebuild_refcounts(Qcow2Check *c, GError **errp);

/* ---- qcow2-check-snapshots.c ---- */

/*
 * Load the snapshot table the header names (the open in check mode left
 * it alone), reporting and, with CHECK_FIX_ERRORS, dropping what cannot
 * be kept.  res gets what was found.
 */
int coroutine_fn qcow2_check_read_snapshots(BlockNode *bs,
                                            BlockCheckResult *res, int fix);
/* Rewrite the snapshot table if reading it found something to repair. */
int coroutine_fn qcow2_check_fix_snapshots(BlockNode *bs,
                                           BlockCheckResult *res, int fix);

#endif
