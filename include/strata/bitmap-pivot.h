/*
 * Bitmaps through a pivot, beyond QEMU (x-strata-merge-bitmaps of
 * block-commit, blockdev-mirror and drive-mirror; off by default).
 *
 * QEMU 7.2 leaves every bitmap on its node: when a commit or a mirror
 * takes a node out of the disk's chain, the node keeps its bitmaps (and
 * stores the persistent ones in its own file), and the node that stays
 * has only its own, which recorded the job's writes.  A backup tool
 * whose bitmap was on the node that left finds no bitmap on the disk and
 * must make a full backup.
 *
 * With the option, at the pivot (drained: no write between) every named
 * bitmap of the nodes that leave is merged into the surviving node's
 * bitmap of the same name, made there first if there is none (same
 * granularity, recording state and persistence).  A merge only adds
 * dirty bits, so no backup can miss a change through it; the bitmaps on
 * the nodes that left stay as they were.  Special cases:
 *   - a bitmap owned by a job (backup: busy, with a successor): its own
 *     bits and its successor's are read, and a busy destination gets the
 *     bits in its successor too, so they outlive the job's end;
 *   - an inconsistent source bitmap says nothing reliable: a destination
 *     of that name becomes all dirty, none is made;
 *   - a persistent bitmap the surviving node cannot store (raw, or no
 *     room in the image) is made there not persistent, with a warning;
 *   - sizes may differ (commit into a smaller base that grew): the bits
 *     past the destination's end are dropped with the data they describe.
 */
#ifndef STRATA_BITMAP_PIVOT_H
#define STRATA_BITMAP_PIVOT_H

#include "strata/block.h"

/* Merge the named bitmaps of from (not into itself) into dst. */
void bitmaps_merge_into(BlockNode *dst, BlockNode *from);

#endif
