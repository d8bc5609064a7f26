/*
 * The mirror_top filter (block/drivers/mirror-top.c): the node a mirror
 * job (and active commit) puts above its source, as QEMU 7.2's.
 *
 * Every parent of the source reaches it through the filter while the job
 * runs.  The filter passes everything down to its "backing" child (the
 * source); a job may hook the writes (write-blocking copy mode: the hook
 * writes to the source with mirror_top_write_through(), then to the
 * target).  For active commit it neither takes consistent read on the
 * chain nor forbids writes below it, since the job writes into the base.
 * When the job ends it removes the filter: the filter stops asking for
 * permissions, then its child takes its place for every parent.
 */
#ifndef STRATA_MIRROR_TOP_H
#define STRATA_MIRROR_TOP_H

#include "strata/block.h"

typedef enum MirrorTopOp {
    MIRROR_TOP_WRITE,
    MIRROR_TOP_ZERO,
    MIRROR_TOP_DISCARD,
} MirrorTopOp;

/*
 * A write through the filter (qiov NULL unless MIRROR_TOP_WRITE).  The
 * hook must pass it to the source with mirror_top_write_through() and
 * return that result.
 */
typedef int coroutine_fn MirrorTopWriteFunc(void *opaque, BlockNode *filter,
                                            MirrorTopOp op, int64_t offset,
                                            int64_t bytes, IOVec *qiov,
                                            size_t qiov_offset, int flags);

/*
 * A new mirror_top node (named node_name, else automatically) above
 * source, which it takes the place of for every parent of source (QEMU's
 * bdrv_append).  is_commit: the permissions of active commit.  Returns
 * the filter with one reference for the caller, or NULL with *errp set
 * and nothing changed ("Duplicate nodes with node-name='x'", a parent
 * that refuses...).
 */
BlockNode *mirror_top_insert(BlockNode *source, const char *node_name,
                             bool is_commit, GError **errp);

/* Hook the writes through the filter (fn NULL: pass them down). */
void mirror_top_set_write_hook(BlockNode *filter, MirrorTopWriteFunc *fn,
                               void *opaque);

/* The hook's way down to the source. */
int coroutine_fn mirror_top_write_through(BlockNode *filter, MirrorTopOp op,
                                          int64_t offset, int64_t bytes,
                                          IOVec *qiov, size_t qiov_offset,
                                          int flags);

/*
 * Take the filter out: it stops forwarding permissions, and the node below
 * it replaces it for every parent.  Cannot fail once the filter's own
 * permissions are dropped; drops the graph's hold on the filter (the
 * caller's reference stays).
 */
void mirror_top_remove(BlockNode *filter);

/* Is bs a mirror_top filter? */
bool node_is_mirror_top(const BlockNode *bs);

#endif
