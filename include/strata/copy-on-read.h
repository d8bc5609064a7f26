/*
 * The copy-on-read filter (block/drivers/copy-on-read.c), QEMU 7.2's
 * "copy-on-read" driver: what a read fetches from the backing chain of
 * the filter's file is written into that file, so that later reads find
 * it there.  With "bottom", only data from the chain down to that node is
 * copied (the stream job's use); without, everything the file does not
 * hold itself, zeroes included.
 *
 * A read with REQ_PREFETCH is made for the copy only: the filter copies
 * and fills no buffer (the stream job's reads).
 */
#ifndef STRATA_COPY_ON_READ_H
#define STRATA_COPY_ON_READ_H

#include "strata/block.h"

/*
 * Take the filter out of the graph: its parents go to its file and the
 * chain it froze is released (QEMU's bdrv_cor_filter_drop).  Drops the
 * caller's reference to cor.  Fails only when a parent's edge is frozen.
 */
bool cor_filter_drop(BlockNode *cor, GError **errp);

/*
 * Background copies (REQ_PREFETCH) waiting for their turn to write into
 * the filter's file: they write one at a time, so that the parents'
 * writes find little copy in front of them (for tests).
 */
int cor_filter_background_waiting(BlockNode *cor);

/* Is bs a copy-on-read filter node? */
bool node_is_cor_filter(const BlockNode *bs);

#endif
