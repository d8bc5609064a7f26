/*
 * The mirror job's state, shared by its run (mirror.c) and its end, the
 * switch to the target or putting everything back (mirror-switch.c).
 * Private to jobs/.
 */
#ifndef STRATA_JOBS_MIRROR_INT_H
#define STRATA_JOBS_MIRROR_INT_H

#include <glib.h>

#include "strata/backend.h"
#include "strata/block-copy.h"
#include "strata/blockjob.h"
#include "strata/coroutine.h"
#include "strata/dirty-bitmap.h"
#include "strata/mirror.h"

typedef struct MirrorJob {
    BlockJob common;
    BlockNode *filter;       /* mirror_top, referenced */
    BlockNode *source;       /* below the filter, referenced */
    BlockNode *target;       /* referenced */
    BlockNode *base;         /* sync top / active commit: the chain's base */
    BlockNode *to_replace;   /* set by complete when `replaces` was given */
    char *replaces;
    BlockChild *source_edge;   /* the filter's edge to the source */
    BlockBackend *target_blk;  /* writes to the target go through it */
    BlockChild *target_edge;   /* its root edge */
    DirtyBitmap *bitmap;
    BlockCopyState *bcs;

    bool is_commit;
    bool merge_bitmaps;      /* x-strata-merge-bitmaps */
    bool frozen;             /* active commit froze filter..base */
    MirrorSync sync;
    MirrorBackingMode backing_mode;
    MirrorCopy copy_mode;
    bool zero_target, unmap;
    BlockdevOnError on_source_error, on_target_error;
    uint32_t granularity;
    /*
     * The target's cluster size as QEMU's bdrv_round_to_clusters() sees it
     * (0: it gives none), and the engine's granularity: the target's
     * cluster size when copies must cover whole target clusters (see
     * mirror_start_job()), else the job's granularity.
     */
    int64_t target_cluster;
    int64_t copy_granularity;
    int64_t buf_size;
    int64_t length;

    bool should_complete;
    bool copying;            /* the engine runs: active writes may start */
    bool in_drain;           /* the job drained the source itself */
    bool prepared;
    int write_ret;           /* an active write failed (policy report) */
    uint64_t active_written; /* bytes active writes put in the target */
    uint64_t flushed_written; /* mirror_written() at the last flush */
    GPtrArray *active;       /* ActiveWrite * in flight */
    int active_count;
    CoQueue active_done;
    CommitActiveOptions x;
    /* x-strata-discard-source: the job's writing edge to the top, and the
     * ranges in the base since the last punch (offset, bytes pairs). */
    BlockChild *punch_edge;
    GArray *punch;
    /* ... the job's writing edges to the images between top and base,
     * bottom first, and the images it made writable for that (read-only
     * again when the job ends). */
    GPtrArray *punch_below;
    GPtrArray *reopened;
    /* Some of the ranges were skipped, not written: the base's flush
     * cannot be left out because the job wrote nothing since the last. */
    bool punch_skipped;
} MirrorJob;

static inline MirrorJob *mirror_job(Job *job)
{
    return (MirrorJob *)job;
}

/* The next node down a chain: a filter's child or the backing node. */
BlockNode *mirror_filter_or_cow(BlockNode *bs);
/* The images made writable for the drops are read-only again, once the
 * job's writing edges are gone. */
void mirror_restore_read_only(MirrorJob *s);

/*
 * The job's end, once (prepare, or abort without a prepare): the target
 * takes the source's place when the job completed and abort is false;
 * the filter goes, the nodes are let go.  0 or a negative errno (the
 * switch failed and was reported).
 */
int mirror_exit_common(Job *job, bool abort);

#endif
