/* Shared by the handlers that start a job (cmd-job.c, job-amend.c). */
#ifndef QAPI_JOB_SETTLE_H
#define QAPI_JOB_SETTLE_H

/*
 * A job the calling request started: let it run until it first waits,
 * and finish at once if it ends without waiting, before the request's
 * reply goes out (see cmd-job.c).
 */
void qmp_job_settle(const char *job_id);

#endif
