/*
 * Private to jobs/: a job's progress as the part of the disk done from
 * its start without a gap (progress-front.c).
 */
#ifndef STRATA_PROGRESS_FRONT_H
#define STRATA_PROGRESS_FRONT_H

#include <glib.h>
#include <stdint.h>
#include "strata/job.h"

typedef struct ProgressFront {
    Job *job;
    int64_t front;      /* [0, front) is done and reported */
    GArray *ahead;      /* int64_t pairs [start, end), sorted, disjoint,
                         * each starting after front: done, not reported */
} ProgressFront;

void progress_front_init(ProgressFront *pf, Job *job);
/* [offset, offset + bytes) is done: the job's progress grows by whatever
 * that joins to the front. */
void progress_front_done(ProgressFront *pf, int64_t offset, int64_t bytes);
void progress_front_destroy(ProgressFront *pf);

#endif
