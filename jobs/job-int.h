/* Private to jobs/: what its files share. */
#ifndef STRATA_JOB_INT_H
#define STRATA_JOB_INT_H

#include "strata/job.h"

/* Tell every listener (job.c). */
void job_notify(Job *job, JobEvent ev, JobStatus old);

#endif
