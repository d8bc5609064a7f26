/*
 * What the qcow2 write files share (qcow2-write.c: guest data writes and
 * the L2 updates they make; qcow2-zero.c: zero writes, discards and
 * unallocation; qcow2-write-compressed.c: compressed writes).  Private to
 * those files; the rest of the driver goes through qcow2.h.
 */
#ifndef QCOW2_WRITE_INT_H
#define QCOW2_WRITE_INT_H

#include "qcow2.h"

/* ---- qcow2-write.c ---- */

/*
 * The L2 table for offset, ready to be changed: a table shared with a
 * snapshot (no copied flag) or missing is replaced by a new one first.
 * Lock held.
 */
int coroutine_fn qcow2_get_l2_for_write(BlockNode *bs, uint64_t offset,
                                        void **l2, unsigned *l2i);
/*
 * Lower the refcounts of the host space the n old L2 entries used, after
 * writing the L2 table that no longer points at them (the ordering rule
 * at the top of qcow2-write.c).
 */
int coroutine_fn qcow2_free_old_entries(BlockNode *bs, const uint64_t *old,
                                        unsigned n, Qcow2DiscardType dt);

/* ---- qcow2-zero.c ---- */

/*
 * 1 if [offset, offset + bytes) reads as zeroes as far as the metadata
 * tells, 0 if not, or a negative errno.  Lock held.
 */
int coroutine_fn qcow2_is_zero(BlockNode *bs, uint64_t offset,
                               uint64_t bytes);

#endif
