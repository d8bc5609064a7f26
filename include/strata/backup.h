/*
 * The backup job (jobs/backup.c): copies a node to a target as the node
 * was when the job started.  A copy-before-write filter
 * (strata/copy-before-write.h) goes above the source for the job's life,
 * so that a write to the source first copies the old data to the target;
 * the job copies everything else in the background through the same copy
 * engine.  QEMU 7.2's backup_job_create(), checks and messages.
 */
#ifndef STRATA_BACKUP_H
#define STRATA_BACKUP_H

#include <stdbool.h>
#include <stdint.h>
#include "strata/block.h"
#include "strata/blockjob.h"
#include "strata/dirty-bitmap.h"
#include "strata/job.h"

/* What is copied (QEMU's MirrorSyncMode, as far as backup takes it). */
typedef enum BackupSyncMode {
    BACKUP_SYNC_TOP,     /* what the source's top image allocates */
    BACKUP_SYNC_FULL,    /* everything the source reads */
    BACKUP_SYNC_NONE,    /* only the old data of what the guest writes */
    BACKUP_SYNC_BITMAP,  /* what sync_bitmap marks (QEMU's 'bitmap') */
} BackupSyncMode;

/*
 * What becomes of the sync bitmap at the end (QEMU's BitmapSyncMode):
 * ON_SUCCESS  cleared of what was copied if the job succeeds (only the
 *             writes made since the job began stay marked);
 * ALWAYS      the same, and after a failure whatever was not copied is
 *             marked again;
 * NEVER       left as it was, plus the writes made meanwhile.
 */
typedef enum BackupBitmapMode {
    BACKUP_BITMAP_ON_SUCCESS,
    BACKUP_BITMAP_NEVER,
    BACKUP_BITMAP_ALWAYS,
} BackupBitmapMode;

/* x-perf: QEMU's BackupPerf. */
typedef struct BackupPerfOptions {
    bool use_copy_range;
    int64_t max_workers;          /* 1 .. INT_MAX */
    int64_t max_chunk;            /* 0: no limit */
} BackupPerfOptions;

typedef struct BackupOptions {
    BackupSyncMode sync;
    int64_t speed;
    bool compress;
    const char *filter_node_name; /* NULL: an automatic name */
    BackupPerfOptions perf;
    BlockdevOnError on_source_error, on_target_error;
    int creation_flags;           /* JOB_MANUAL_FINALIZE, ... */
    /* A bitmap of the source (NULL: none): what sync=bitmap copies, and
     * with any sync but none what bitmap_mode updates. */
    DirtyBitmap *sync_bitmap;
    BackupBitmapMode bitmap_mode;
} BackupOptions;

/*
 * A backup job (not started) from bs to target, in txn (NULL: its own).
 * On failure nothing is left behind: no filter, no job.
 */
BlockJob *backup_job_create(const char *job_id, BlockNode *bs,
                            BlockNode *target, const BackupOptions *opts,
                            JobTxn *txn, GError **errp);

#endif
