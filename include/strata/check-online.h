/*
 * The consistency check of a node that is in use (QMP's
 * x-strata-block-check): the same check strata-img check runs
 * (node_check()), on a copy of the image's metadata taken while the node
 * is drained for a moment, so that guest writes during the check can
 * neither make it report a problem that is not there nor wait for it.
 *
 *   1. write the node's metadata caches back to the file (to the OS, no
 *      sync to the disk), outside the drain, so that little is left to
 *      write inside it;
 *   2. drain the node, write back again, and copy every metadata cluster (the
 *      header, L1 and L2 tables of the image and its snapshots, the
 *      snapshot table, the refcount table and blocks, the bitmap
 *      directory and tables) into a sparse in-memory file at the same
 *      offsets, with the file's length: a point-in-time image without its
 *      data clusters, which the check never reads;
 *   3. end the drain (the guest's requests go on);
 *   4. open that copy read-only as a qcow2 node (no backing file) and run
 *      node_check() on it without repair.
 *
 * The guest waits only during step 2, whose cost is one read per run of
 * contiguous metadata clusters (about 1/8192 of the data with 64 KiB
 * clusters), not the check's counting and comparing.  qcow2 only; images
 * with an external data file, encryption, or refcounts left stale on
 * purpose (the dirty bit of lazy refcounts) are refused.
 */
#ifndef STRATA_CHECK_ONLINE_H
#define STRATA_CHECK_ONLINE_H

#include "strata/block-ops.h"

typedef struct OnlineCheckStats {
    int64_t metadata_bytes;      /* copied under the drain */
    int64_t pause_ns;            /* drain begin to drain end */
} OnlineCheckStats;

/*
 * progress(opaque, done, total) hears the copy (bytes of metadata) and
 * the check (counted as much again); report/opaque as node_check().
 * -errno with *errp set when the check could not run; otherwise 0 and
 * *res is what node_check() found on the copy.  In a coroutine (a job):
 * the caller must not be a parent of bs that the drain waits for.
 */
int coroutine_fn node_co_check_online(BlockNode *bs, BlockCheckResult *res,
                                      OnlineCheckStats *stats,
                                      NodeCheckReport *report,
                                      void (*progress)(void *opaque,
                                                       uint64_t done,
                                                       uint64_t total),
                                      void *opaque, GError **errp);

#endif
