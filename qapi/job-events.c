/*
 * The jobs' events (JOB_STATUS_CHANGE, BLOCK_JOB_*) and the jobs'
 * shutdown phase (strata/qmp-jobs.h).  Apart from cmd-job.c because it
 * needs the server, which the tests of the command table do not link.
 *
 * The order is QEMU 7.2's because the job layer notifies in QEMU's order:
 * JOB_STATUS_CHANGE ready then BLOCK_JOB_READY; pending then
 * BLOCK_JOB_PENDING (auto-finalize off only); BLOCK_JOB_COMPLETED or
 * CANCELLED after the job's commit/abort/clean and before its concluded
 * status; BLOCK_JOB_ERROR when the on-error policy has decided, before
 * the job pauses for 'stop'.  Jobs without an id send nothing.
 */
#include "strata/blockjob.h"
#include "strata/job.h"
#include "strata/job-rate.h"
#include "strata/qmp-jobs.h"
#include "strata/qmp-server.h"
#include "qapi-events.h"

static void block_job_event(BlockJob *bjob, JobEvent ev)
{
    BlockJobQueryInfo *q = block_job_query(bjob);
    JobType type = job_type(&bjob->job);

    switch (ev) {
    case JOB_EVENT_READY:
        qapi_event_send_block_job_ready(type, q->device, q->len, q->offset,
                                        q->speed);
        break;
    case JOB_EVENT_PENDING:
        qapi_event_send_block_job_pending(type, q->device);
        break;
    case JOB_EVENT_COMPLETED:
        /* QEMU names the error only when the job failed (ret < 0). */
        qapi_event_send_block_job_completed(type, q->device, q->len,
                                            q->offset, q->speed,
                                            bjob->job.ret < 0 ? q->error
                                                              : NULL);
        break;
    case JOB_EVENT_CANCELLED:
        qapi_event_send_block_job_cancelled(type, q->device, q->len,
                                            q->offset, q->speed);
        break;
    default:
        break;
    }
    block_job_query_info_free(q);
}

static void job_event(Job *job, JobEvent ev, JobStatus old, void *opaque)
{
    (void)old;
    (void)opaque;
    /* QEMU sends job events for jobs with an id only. */
    if (job_is_internal(job)) {
        return;
    }
    if (ev == JOB_EVENT_STATUS_CHANGE) {
        qapi_event_send_job_status_change(job->id, job->status);
    } else if (job_is_block_job(job)) {
        block_job_event((BlockJob *)job, ev);
    }
}

static void block_job_error(BlockJob *bjob, bool is_read,
                            BlockErrorAction action, void *opaque)
{
    (void)opaque;
    if (!job_is_internal(&bjob->job)) {
        qapi_event_send_block_job_error(bjob->job.id,
                                        is_read ? IO_OPERATION_TYPE_READ
                                                : IO_OPERATION_TYPE_WRITE,
                                        action);
    }
}

void qmp_jobs_init(void)
{
    /* Registered for as long as the program runs. */
    job_add_listener(job_event, NULL);
    job_rate_init();
    block_job_add_error_listener(block_job_error, NULL);
    qmp_server_at_shutdown(QMP_SHUTDOWN_JOBS, job_cancel_sync_all);
}
