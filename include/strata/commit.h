/*
 * The commit job: what the images of a backing chain from `top` down to
 * (not including) `base` allocate is copied into `base`, then those
 * images leave the chain (QEMU 7.2's block/commit.c, "intermediate
 * commit").  Active commit, whose top is the active layer, is a mirror
 * (strata/mirror.h, commit_active_start()).
 *
 * The job:
 *  - inserts a "commit_top" filter above top (implicit unless
 *    filter_node_name names it): top's parents keep reading through it
 *    while the job blocks consistent reads of the images it merges;
 *  - freezes the chain from the filter down to base with the core's
 *    freeze counters (owner "commit job 'ID'") for its whole life;
 *  - reopens base read-write if it was read-only, and back at the end;
 *  - copies with the copy engine (strata/block-copy.h): what
 *    node_co_is_allocated_above(top, base) says is allocated is read
 *    through top and written to base, the rest skipped; base grows to
 *    top's length first;
 *  - on success, puts base in the filter's place for every parent (the
 *    overlay of top gets base as backing node) and makes each overlay's
 *    image name backing_file (default: base's filename) and base's
 *    format, as QEMU's bdrv_drop_intermediate;
 *  - on failure or cancel, removes the filter and leaves the chain as it
 *    was (base may hold some of the data: the chain still reads the same).
 */
#ifndef STRATA_COMMIT_H
#define STRATA_COMMIT_H

#include <stdbool.h>
#include <stdint.h>
#include "strata/block.h"
#include "strata/blockjob.h"

typedef struct CommitOptions {
    const char *job_id;          /* NULL: as block_job_create() */
    BlockNode *bs;               /* the job's main node (the active layer) */
    BlockNode *top;              /* first image committed; in bs's chain */
    BlockNode *base;             /* below top in its chain */
    int creation_flags;          /* JOB_MANUAL_FINALIZE / _DISMISS */
    int64_t speed;               /* bytes/s, 0: unlimited */
    BlockdevOnError on_error;
    const char *backing_file;    /* NULL: base's filename */
    const char *filter_node_name; /* NULL: an implicit filter */

    /*
     * The offline front end (strata-img commit, which is qemu-img
     * commit: QEMU runs an active commit there, a mirror): copy only, in
     * the mirror's way (chunks of the base's cluster size, zeroes of the
     * chain written as zero writes that may unmap), and leave the graph
     * as it was: no overlay is updated, nothing is dropped.
     */
    bool copy_only;

    /*
     * seed 002, off by default (x-strata-skip-identical): read base first
     * and do not write what it already holds identically.
     */
    bool skip_identical;

    /*
     * Off by default (x-strata-discard-source): once base holds the data
     * durably, the merged images' ranges become unallocated (they free
     * their space if kept as files).
     */
    bool discard_source;

    /* Off by default (x-strata-merge-bitmaps, strata/bitmap-pivot.h):
     * the named bitmaps of the dropped images are merged into base's. */
    bool merge_bitmaps;

    /* Called when the job is finalized (may be NULL). */
    JobCompletionFunc *cb;
    void *opaque;
} CommitOptions;

/*
 * Create and start the job.  Checks (QEMU 7.2's messages): top and base
 * the same image ("Invalid files for merge: top and base are the same"),
 * the sizes, permissions of every node involved (the error names who
 * holds a conflicting one), the freeze.  NULL with *errp set on
 * failure, and then the graph is as it was.
 */
BlockJob *commit_start(const CommitOptions *opts, GError **errp);

/*
 * The image of top's backing chain (below top, past filters) that `name`
 * names, as QEMU's bdrv_find_backing_image (block-commit's base and top,
 * qemu-img commit -b): each layer resolves a relative name against its
 * own directory and canonical paths are compared, unless a protocol is
 * involved, when the names must be equal.  NULL: none.
 */
BlockNode *node_find_backing_image(BlockNode *top, const char *name);

/* The bytes the job has skipped and written, for front ends and tests. */
typedef struct CommitStats {
    uint64_t bytes_written, bytes_zeroed, bytes_skipped, bytes_discarded;
} CommitStats;
void commit_get_stats(BlockJob *job, CommitStats *st);

#endif
