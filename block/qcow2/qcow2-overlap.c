/*
 * Metadata overlap checks: the last line of defence against a damaged
 * image.  If an L2 entry or a refcount points into the header, an L1 or
 * L2 table, the refcount structures or the snapshot table, a guest write
 * there would destroy the image; QEMU then refuses the write and marks the
 * image corrupt, and so do we, with the same message.
 *
 * The checks read the tables kept in memory (L1, refcount table, snapshot
 * L1 offsets); in the "all" mode, the snapshots' L2 tables are read from
 * the image.  Which structures are checked is the overlap-check option.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"

const char *const qcow2_overlap_option[QCOW2_OL_COUNT] = {
    "main-header", "active-l1", "active-l2", "refcount-table",
    "refcount-block", "snapshot-table", "inactive-l1", "inactive-l2",
    "bitmap-directory",
};

/* The words QEMU uses in its corruption message. */
static const char *const overlap_name[QCOW2_OL_COUNT] = {
    "qcow2_header", "active L1 table", "active L2 table", "refcount table",
    "refcount block", "snapshot table", "inactive L1 table",
    "inactive L2 table", "bitmap directory",
};

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/*
 * Which structure the range hits (a QCOW2_OL_* bit), 0, or -errno when a
 * snapshot's L1 table must be read (mode "all") and is itself invalid
 * (QEMU then refuses the write with that error, without calling the image
 * corrupt: iotest 080).
 */
static int coroutine_fn find_overlap(BlockNode *bs, int checks,
                                     uint64_t offset, uint64_t size)
{
    Qcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;

    /* Whole clusters: metadata is allocated in clusters. */
    uint64_t start = qcow2_start_of_cluster(s, offset);
    size = ROUND_UP(offset + size, cs) - start;
    offset = start;

    if ((checks & QCOW2_OL_MAIN_HEADER) && offset < cs) {
        return QCOW2_OL_MAIN_HEADER;
    }
    if ((checks & QCOW2_OL_ACTIVE_L1) &&
        overlaps(offset, size, s->l1_table_offset,
                 (uint64_t)s->l1_size * 8)) {
        return QCOW2_OL_ACTIVE_L1;
    }
    if ((checks & QCOW2_OL_REFCOUNT_TABLE) &&
        overlaps(offset, size, s->refcount_table_offset,
                 (uint64_t)s->refcount_table_size * 8)) {
        return QCOW2_OL_REFCOUNT_TABLE;
    }
    if ((checks & QCOW2_OL_SNAPSHOT_TABLE) &&
        overlaps(offset, size, s->snapshots_offset, s->snapshots_size)) {
        return QCOW2_OL_SNAPSHOT_TABLE;
    }
    if ((checks & QCOW2_OL_BITMAP_DIRECTORY) && s->has_bitmaps_ext &&
        overlaps(offset, size, s->bitmaps_ext.bitmap_directory_offset,
                 s->bitmaps_ext.bitmap_directory_size)) {
        return QCOW2_OL_BITMAP_DIRECTORY;
    }
    if (checks & QCOW2_OL_ACTIVE_L2) {
        for (uint32_t i = 0; i < s->l1_size; i++) {
            uint64_t l2 = s->l1_table[i] & L1E_OFFSET_MASK;
            if (l2 && overlaps(offset, size, l2, cs)) {
                return QCOW2_OL_ACTIVE_L2;
            }
        }
    }
    if (checks & QCOW2_OL_REFCOUNT_BLOCK) {
        for (uint32_t i = 0; i <= s->max_refcount_index &&
                             i < s->refcount_table_size; i++) {
            uint64_t rb = s->refcount_table[i] & REFT_OFFSET_MASK;
            if (rb && overlaps(offset, size, rb, cs)) {
                return QCOW2_OL_REFCOUNT_BLOCK;
            }
        }
    }
    if (checks & (QCOW2_OL_INACTIVE_L1 | QCOW2_OL_INACTIVE_L2)) {
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            uint64_t l1 = s->snapshots[i].l1_table_offset;
            uint64_t l1_bytes = (uint64_t)s->snapshots[i].l1_size * 8;
            /*
             * Only mode "all" reads the table, and only then must it be
             * valid (the default mode repairs such images in check).
             * Validated before the L1 overlap test: strata's writes reach
             * the file in another order than QEMU's, whose first write here
             * is a refcount block that fails validation, not the overlap.
             */
            if (checks & QCOW2_OL_INACTIVE_L2) {
                int invalid = qcow2_validate_snapshot_l1(s, &s->snapshots[i],
                                                         NULL);
                if (invalid < 0) {
                    return invalid;
                }
            }
            if ((checks & QCOW2_OL_INACTIVE_L1) &&
                overlaps(offset, size, l1, l1_bytes)) {
                return QCOW2_OL_INACTIVE_L1;
            }
            if (!(checks & QCOW2_OL_INACTIVE_L2) || !l1_bytes) {
                continue;
            }
            uint64_t *t = g_try_malloc(l1_bytes);
            if (!t || child_co_pread(bs->file, (int64_t)l1, (int64_t)l1_bytes,
                                     t, 0) < 0) {
                g_free(t);
                continue;
            }
            for (uint32_t j = 0; j < s->snapshots[i].l1_size; j++) {
                uint64_t l2 = be64toh(t[j]) & L1E_OFFSET_MASK;
                if (l2 && overlaps(offset, size, l2, cs)) {
                    g_free(t);
                    return QCOW2_OL_INACTIVE_L2;
                }
            }
            g_free(t);
        }
    }
    return 0;
}

int coroutine_fn qcow2_check_overlap(BlockNode *bs, int ign, uint64_t offset,
                                     uint64_t size)
{
    Qcow2State *s = bs->opaque;
    int checks = s->overlap_check & ~ign;
    int hit;

    if (!checks || !size) {
        return 0;
    }
    hit = find_overlap(bs, checks, offset, size);
    if (hit <= 0) {
        return hit;
    }
    qcow2_signal_corruption(bs, true, (int64_t)offset, (int64_t)size,
                            "Preventing invalid write on metadata (overlaps "
                            "with %s)",
                            overlap_name[__builtin_ctz((unsigned)hit)]);
    return -EIO;
}
