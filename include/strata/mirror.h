/*
 * The mirror job (blockdev-mirror, drive-mirror) and active commit, which
 * is a mirror of the active layer into its base (block-commit of the top
 * of a chain), as QEMU 7.2's block/mirror.c.
 *
 * A mirror job inserts a filter node ("mirror_top", implicit unless
 * filter-node-name names it) above the source: every parent of the source
 * now reaches it through the filter, which lets the job see guest writes.
 * A recording dirty bitmap on the source marks what they change; the copy
 * engine (strata/block-copy.h) copies what the bitmap says is left until
 * the source and the target hold the same data, then the job is ready
 * (BLOCK_JOB_READY) and keeps them in sync until job-complete, which puts
 * the target in the source's place for every parent (or in the place of
 * the node `replaces` names), or block-job-cancel, which in ready leaves
 * both as they are (a "soft" cancel that completes without the switch).
 * With copy-mode write-blocking, guest writes that reach the filter go to
 * the target too before they complete.
 *
 * Errors are QEMU 7.2's messages and classes (GenericError unless
 * stated); nothing is left half-done when a start fails.
 */
#ifndef STRATA_MIRROR_H
#define STRATA_MIRROR_H

#include <stdbool.h>
#include <stdint.h>
#include "strata/block.h"
#include "strata/blockjob.h"
#include "strata/job.h"

/*
 * What to copy (QEMU's MirrorSyncMode full/top/none; incremental and
 * bitmap are not mirror modes).  Named apart from the QAPI enum, which
 * the QMP layer converts.
 */
typedef enum MirrorSync {
    MIRROR_SYNC_FULL,        /* the whole disk as the guest sees it */
    MIRROR_SYNC_TOP,         /* what the source's top image allocates */
    MIRROR_SYNC_NONE,        /* only what is written from now on */
} MirrorSync;

/* How guest writes reach the target (QEMU's MirrorCopyMode). */
typedef enum MirrorCopy {
    MIRROR_COPY_BACKGROUND,      /* marked dirty, copied later */
    MIRROR_COPY_WRITE_BLOCKING,  /* written to the target too, at once */
} MirrorCopy;

/*
 * What becomes of the target's backing chain (QEMU's
 * BlockMirrorBackingMode): drive-mirror with mode absolute-paths gives
 * the target the source's backing node (sync top) or the source itself
 * (sync none) at completion; mode existing opens the backing file the
 * target's image names at job-complete; blockdev-mirror leaves it.
 */
typedef enum MirrorBackingMode {
    MIRROR_SOURCE_BACKING_CHAIN,
    MIRROR_OPEN_BACKING_CHAIN,
    MIRROR_LEAVE_BACKING_CHAIN,
} MirrorBackingMode;

typedef struct MirrorOptions {
    const char *job_id;          /* NULL: as block_job_create() */
    BlockNode *source;           /* the node to mirror (may be a filter) */
    BlockNode *target;           /* an open node, not yet in use */
    const char *replaces;        /* node to replace at completion, or NULL */
    int creation_flags;          /* JOB_MANUAL_FINALIZE / _DISMISS */
    int64_t speed;               /* bytes/s, 0: unlimited */
    uint32_t granularity;        /* 0: the target's cluster size within
                                    4 KiB .. 64 KiB, else 64 KiB */
    int64_t buf_size;            /* the copy engine's memory budget; 0: 16 MiB,
                                    QEMU's default */
    MirrorSync sync;
    MirrorBackingMode backing_mode;
    bool zero_target;            /* sync full: copy the whole disk, zeroes
                                    where the source reads zeroes (a target
                                    with old data); false: only what the
                                    source's chain allocates (new images) */
    BlockdevOnError on_source_error;
    BlockdevOnError on_target_error;
    bool unmap;                  /* zeroes may be written as holes */
    const char *filter_node_name; /* NULL: an implicit filter */
    MirrorCopy copy_mode;
    /* Beyond QEMU, off by default (x-strata-merge-bitmaps,
     * strata/bitmap-pivot.h): at the pivot, the replaced node's named
     * bitmaps are merged into the target's. */
    bool merge_bitmaps;
} MirrorOptions;

/*
 * Start a mirror job (QEMU's mirror_start with its checks: the sizes,
 * `replaces`, the permissions of both nodes).  The job is started; it
 * holds references to both nodes.  NULL with *errp set on failure, and
 * then the graph is as it was.
 */
BlockJob *mirror_start(const MirrorOptions *opts, GError **errp);

/* strata's options of active commit (seed 002), off by default. */
typedef struct CommitActiveOptions {
    /* Discard each range of the overlays once it is in the base
     * (x-strata-discard-source). */
    bool discard_source;
    /* Read the base first and skip writing what it already holds
     * identically (x-strata-skip-identical). */
    bool skip_identical;
    /* Merge the named bitmaps of the images that leave the chain into
     * the base's at the pivot (x-strata-merge-bitmaps). */
    bool merge_bitmaps;
} CommitActiveOptions;

/*
 * Active commit (block-commit whose top is the active layer bs): a
 * "commit" job mirroring bs into base, which is below bs in bs's chain.
 * As QEMU 7.2's commit_active_start: the chain from bs down to base is
 * frozen for the job's life; base is reopened read-write if it was
 * read-only (back to read-only only if the start fails: after the job it
 * stays writable, as in QEMU); the job becomes
 * ready when base holds everything, and job-complete puts base in bs's
 * place for every parent of bs (bs is the active layer: its parents are
 * users and filters, no image names it as backing file, so no header is
 * rewritten, as in QEMU); the images between bs and base are dropped from
 * the graph with bs.  A soft cancel in ready leaves the chain as it was,
 * base holding a copy of the data.  job_id NULL: as block_job_create().  x may be NULL
 * (QEMU's behaviour).  on_error is used for source and target.  NULL with *errp
 * on failure, nothing changed.
 */
BlockJob *commit_active_start(const char *job_id, BlockNode *bs,
                              BlockNode *base, int creation_flags,
                              int64_t speed, BlockdevOnError on_error,
                              const char *filter_node_name,
                              const CommitActiveOptions *x, GError **errp);

#endif
