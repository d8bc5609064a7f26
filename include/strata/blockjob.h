/*
 * Block jobs: jobs that move data between block nodes (mirror, commit,
 * stream, backup), QEMU 7.2's BlockJob on top of the generic job
 * (strata/job.h).
 *
 * A block job has a main node (its "device" in QEMU's events and
 * query-block-jobs is the job id), an I/O status, and on-error policies:
 * block_job_error_action() decides what an I/O error does (report,
 * ignore, or stop: the job pauses with io-status failed/nospace until
 * block-job-resume), and tells the listeners, which the QMP layer turns
 * into BLOCK_JOB_ERROR.  BLOCK_JOB_COMPLETED / CANCELLED / READY /
 * PENDING are built by the QMP layer from the job events and
 * block_job_query().
 */
#ifndef STRATA_BLOCKJOB_H
#define STRATA_BLOCKJOB_H

#include <stdbool.h>
#include <stdint.h>
#include "strata/block.h"
#include "strata/job.h"

/* QEMU's BlockdevOnError, in its order (the QAPI schema's names, so that
 * the generator can use these enums: 'library-enums' pragma). */
typedef enum BlockdevOnError {
    BLOCKDEV_ON_ERROR_REPORT,
    BLOCKDEV_ON_ERROR_IGNORE,
    BLOCKDEV_ON_ERROR_ENOSPC,
    BLOCKDEV_ON_ERROR_STOP,
    BLOCKDEV_ON_ERROR_AUTO,
    BLOCKDEV_ON_ERROR__MAX,
} BlockdevOnError;

/* QEMU's BlockErrorAction, in its order. */
typedef enum BlockErrorAction {
    BLOCK_ERROR_ACTION_IGNORE,
    BLOCK_ERROR_ACTION_REPORT,
    BLOCK_ERROR_ACTION_STOP,
    BLOCK_ERROR_ACTION__MAX,
} BlockErrorAction;

/* QEMU's BlockDeviceIoStatus, in its order. */
typedef enum BlockDeviceIoStatus {
    BLOCK_DEVICE_IO_STATUS_OK,
    BLOCK_DEVICE_IO_STATUS_FAILED,
    BLOCK_DEVICE_IO_STATUS_NOSPACE,
    BLOCK_DEVICE_IO_STATUS__MAX,
} BlockDeviceIoStatus;

typedef struct BlockJob {
    Job job;                     /* first: a BlockJob is a Job */
    BlockNode *bs;               /* the main node, held until dismissed */
    BlockDeviceIoStatus iostatus;
    /* Called by block_job_user_resume(); drivers may set it. */
    void (*on_resume)(struct BlockJob *bjob);
} BlockJob;

/*
 * A block job on bs, which it attaches to as its "main node" edge taking
 * perm and sharing shared.  driver->job_type is commit, stream, mirror
 * or backup; driver->instance_size >= sizeof(BlockJob); driver->user_resume
 * is (or calls) block_job_user_resume.
 *
 * job_id NULL without JOB_INTERNAL: the name of the device using bs, as
 * QEMU 7.2 (the daemon has none, so "Invalid job ID ''").  speed < 0:
 * "Parameter 'speed' expects a non-negative value".  Other arguments and
 * errors as job_create(); on an error after job_create() the job is
 * dismissed again (JOB_STATUS_CHANGE created, then null, as QEMU).
 *
 * The reference on bs is dropped when the job is dismissed (status
 * null), so a driver's free() must not use bjob->bs.  The job is not
 * started.
 */
void *block_job_create(const char *job_id, const JobDriver *driver,
                       JobTxn *txn, BlockNode *bs, uint64_t perm,
                       uint64_t shared, int64_t speed, int flags,
                       JobCompletionFunc *cb, void *opaque, GError **errp);

/* Is this job a block job (created by block_job_create)? */
bool job_is_block_job(const Job *job);
/* The block job named id, or NULL (also NULL for other jobs). */
BlockJob *block_job_find(const char *id);
/*
 * For the block-job-* verbs: the block job named id or QEMU 7.2's
 * DeviceNotActive error "Block job 'ID' not found".
 */
BlockJob *block_job_find_err(const char *id, GError **errp);

/*
 * An I/O error in the job (error is a positive errno): the action the
 * policy asks for (ENOSPC and AUTO: stop on ENOSPC, report otherwise, as
 * QEMU 7.2).  Tells the error listeners (BLOCK_JOB_ERROR), then for STOP
 * pauses the job as a user pause (unless the user paused it already) and
 * sets iostatus (failed, nospace for ENOSPC) if it was ok; the job stops
 * at its next pause point and block-job-resume/job-resume goes on.
 */
BlockErrorAction block_job_error_action(BlockJob *job, BlockdevOnError on_err,
                                        bool is_read, int error);

/*
 * job-resume/block-job-resume of a block job (and a cancel ending a user
 * pause): iostatus back to ok, then bjob->on_resume if set.
 */
void block_job_user_resume(Job *job);

/* One line of query-block-jobs (QEMU's BlockJobInfo members). */
typedef struct BlockJobQueryInfo {
    const char *type;            /* job_type_name() */
    char *device;                /* the job id */
    int64_t len, offset;         /* progress total and current */
    bool busy, paused, ready;
    int64_t speed;
    BlockDeviceIoStatus io_status;
    JobStatus status;
    bool auto_finalize, auto_dismiss;
    char *error;                 /* NULL: none */
} BlockJobQueryInfo;

BlockJobQueryInfo *block_job_query(BlockJob *job);
void block_job_query_info_free(BlockJobQueryInfo *info);
/* Every block job with an id, in query-jobs' order. */
GPtrArray *block_job_query_all(void);

/* BLOCK_JOB_ERROR's source: called after every error decision. */
typedef void BlockJobErrorFunc(BlockJob *job, bool is_read,
                               BlockErrorAction action, void *opaque);
unsigned block_job_add_error_listener(BlockJobErrorFunc *fn, void *opaque);
void block_job_remove_error_listener(unsigned handle);

const char *blockdev_on_error_name(BlockdevOnError e);       /* "report" ... */
const char *block_error_action_name(BlockErrorAction a); /* "ignore" ... */
const char *block_device_io_status_name(BlockDeviceIoStatus s);       /* "ok" ... */

#endif
