/*
 * What the qcow2 write files share (qcow2-write.c: guest data writes and
 * the L2 updates they make; qcow2-zero.c: zero writes, discards and
 * unallocation; qcow2-write-compressed.c: compressed writes;
 * qcow2-inflight.c: the claims of allocations in flight).  Private to
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

/* ---- qcow2-inflight.c ---- */

/* A guest range whose clusters a write fills with s->lock released. */
typedef struct Qcow2Inflight Qcow2Inflight;

/*
 * Claim the guest clusters of [start, end) for the calling coroutine
 * (lock held).  shared: an in-place write, which other writes to the same
 * clusters need not wait for; only what frees or shares clusters does.
 */
Qcow2Inflight *qcow2_claim(Qcow2State *s, uint64_t start, uint64_t end,
                           bool shared);
/* Drop the claim and wake whoever waits for it (lock held). */
void qcow2_release_claim(Qcow2State *s, Qcow2Inflight *f);
/*
 * Wait (lock held, released while waiting) until no claim overlaps the
 * guest clusters of [start, end); shared claims count only with
 * include_shared.  True if it had to wait.
 */
bool coroutine_fn qcow2_wait_claims(BlockNode *bs, uint64_t start,
                                   uint64_t end, bool include_shared);

/* ---- qcow2-zero.c ---- */

/*
 * 1 if [offset, offset + bytes) reads as zeroes as far as the metadata
 * tells, 0 if not, or a negative errno.  Lock held.
 */
int coroutine_fn qcow2_is_zero(BlockNode *bs, uint64_t offset,
                               uint64_t bytes);

#endif
