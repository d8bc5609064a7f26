/*
 * x-strata-discard-backing on the copy-on-read filter (beyond QEMU,
 * docs/qmp.md): what the filter copied into its file is dropped from the
 * backing images below, which nobody reads there again.  Private to the
 * copy-on-read driver (block/drivers/copy-on-read.c).
 */
#ifndef STRATA_COR_DISCARD_H
#define STRATA_COR_DISCARD_H

#include "strata/block-driver.h"

typedef struct CorDiscard CorDiscard;

/*
 * Set up on the filter `cor` (its file already open): the backing images
 * of the file, down to `bottom` (NULL: the whole chain), must be used by
 * that chain alone; they are reopened read-write, the filter takes an
 * edge with the write permission on each, and, without bottom (which the
 * filter froze already), the chain is frozen.  NULL and *errp on refusal,
 * with nothing changed.
 */
CorDiscard *cor_discard_open(BlockNode *cor, BlockNode *bottom,
                             GError **errp);
/* The edges go, the images are read-only again, the chain unfrozen. */
void cor_discard_close(CorDiscard *d);
/* Whether c is one of the filter's edges to the backing images. */
bool cor_discard_is_edge(const BlockChild *c);
/* [offset, offset + bytes) of the file now holds what the copy read. */
void cor_discard_note(CorDiscard *d, int64_t offset, int64_t bytes);
/*
 * The filter's flush, before the generic one flushes its children (the
 * file, and the images through the filter's edges): the file is flushed,
 * then what was noted before is dropped from the backing images that
 * still have no other user.  The result is the file's flush: a failure
 * to drop is a warning (the guest's data is safe either way).
 */
int coroutine_fn cor_discard_flush(CorDiscard *d);

#endif
