/*
 * The QMP layer's part in the life of jobs, for the daemon: call
 * qmp_jobs_init() once at start.  It sends JOB_STATUS_CHANGE to the
 * clients on every status change of a job with an id, and has every job
 * force-cancelled when the daemon stops (the server's jobs phase, after
 * the exports and before the nodes close).
 */
#ifndef STRATA_QMP_JOBS_H
#define STRATA_QMP_JOBS_H

void qmp_jobs_init(void);

#endif
