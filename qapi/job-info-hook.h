/*
 * Extra members of a job's query-jobs entry, added by the command file
 * that owns the job type (cmd-job.c builds the entry).  A hook rather
 * than a call: cmd-job.c is linked by tests that do not have those
 * command files (nor the server they need).
 */
#ifndef QAPI_JOB_INFO_HOOK_H
#define QAPI_JOB_INFO_HOOK_H

#include "strata/job.h"
#include "qapi-types.h"

typedef void JobInfoHook(Job *job, JobInfo *info);

/* Called for every job in every query-jobs from now on; once per fn. */
void qmp_query_jobs_add_hook(JobInfoHook *fn);

#endif
