/*
 * JOB_STATUS_CHANGE and the jobs' shutdown phase (strata/qmp-jobs.h).
 * Apart from cmd-job.c because it needs the server, which the tests of
 * the command table do not link.
 */
#include "strata/job.h"
#include "strata/qmp-jobs.h"
#include "strata/qmp-server.h"
#include "qapi-events.h"

static void status_changed(Job *job, JobEvent ev, JobStatus old,
                           void *opaque)
{
    (void)old;
    (void)opaque;
    /* QEMU sends JOB_STATUS_CHANGE for jobs with an id only. */
    if (ev == JOB_EVENT_STATUS_CHANGE && !job_is_internal(job)) {
        qapi_event_send_job_status_change(job->id, job->status);
    }
}

void qmp_jobs_init(void)
{
    /* Registered for as long as the program runs. */
    job_add_listener(status_changed, NULL);
    qmp_server_at_shutdown(QMP_SHUTDOWN_JOBS, job_cancel_sync_all);
}
