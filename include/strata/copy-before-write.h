/*
 * The copy-before-write filter (block/drivers/copy-before-write.c), as the
 * backup job uses it: inserted above the source, it copies the old data of
 * a range to the target through the copy engine before a write reaches
 * the source, so that the target ends up with the source as it was when
 * the filter was inserted.  Users get the same filter with blockdev-add
 * (driver copy-before-write).
 */
#ifndef STRATA_COPY_BEFORE_WRITE_H
#define STRATA_COPY_BEFORE_WRITE_H

#include "strata/block.h"
#include "strata/block-copy.h"

/* What the backup job asks of the filter's copy engine. */
typedef struct CbwCopyOptions {
    bool compress;
    bool use_copy_range;
    int max_workers;            /* 0: the engine's default */
    int64_t max_chunk;          /* 0: the engine's limit */
    /* NULL: the engine's own (whole chain); backup's sync=top passes one
     * that skips what the top image does not allocate. */
    BlockCopyClassifyFunc *classify;
    void *classify_opaque;
    BlockCopyProgressFunc *progress;
    void *progress_opaque;
} CbwCopyOptions;

/*
 * Open a copy-before-write filter over source with target as its target
 * (node name filter_node_name, or an automatic one), its engine set up
 * with opts, and put it in source's place for every parent of source
 * (QEMU's bdrv_cbw_append).  Returns the filter (one reference, the
 * caller's) and its engine in *bcs.
 */
BlockNode *cbw_append(BlockNode *source, BlockNode *target,
                      const char *filter_node_name,
                      const CbwCopyOptions *opts, BlockCopyState **bcs,
                      GError **errp);

/* Take the filter out again (its parents go back to the source) and drop
 * the caller's reference (QEMU's bdrv_cbw_drop). */
void cbw_drop(BlockNode *cbw);

/*
 * Fleecing: the filter's point-in-time view, as the snapshot-access
 * driver reads it (QEMU's bdrv_co_preadv_snapshot and friends).  bs is
 * the filter node; -ENOTSUP for any other node.  Reads fail with -EACCES
 * where the view has no data (outside the `bitmap` option's clusters,
 * discarded, or after a failed copy under on-cbw-error=break-snapshot).
 * Discard frees whole clusters of the target: they are no longer copied
 * and no longer readable.  Coroutine context, in the node's loop.
 */
bool node_has_snapshot_api(const BlockNode *bs);
int coroutine_fn cbw_snapshot_preadv(BlockNode *bs, int64_t offset,
                                     int64_t bytes, IOVec *qiov,
                                     size_t qiov_offset);
int coroutine_fn cbw_snapshot_block_status(BlockNode *bs, bool want_zero,
                                           int64_t offset, int64_t bytes,
                                           int64_t *pnum, int64_t *map,
                                           BlockNode **file);
int coroutine_fn cbw_snapshot_pdiscard(BlockNode *bs, int64_t offset,
                                       int64_t bytes);

#endif
