/*
 * JOB_STATUS_CHANGE and the jobs' shutdown phase (strata/qmp-jobs.h).
 * Apart from cmd-job.c because it needs the server, which the tests of
 * the command table do not link.
 */
#include "strata/qmp-jobs.h"
#include "strata/qmp-server.h"
#include "qapi-events.h"
#include "job-link.h"

static void send_status_change(const char *id, int status)
{
    qapi_event_send_job_status_change(id, (JobStatus)status);
}

void qmp_jobs_init(void)
{
    qmp_job_watch(send_status_change);
    qmp_server_at_shutdown(QMP_SHUTDOWN_JOBS, qmp_job_cancel_all);
}
