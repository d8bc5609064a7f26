/*
 * How fast a job progresses and when it should be done (strata's
 * extension of query-jobs: x-strata-rate, x-strata-eta; seed 002).
 *
 * The rate is progress units per second (bytes for the block jobs) over a
 * sliding window of JOB_RATE_WINDOW_NS: the progress made since the last
 * sample at least that old (or the oldest one) divided by the time since.
 * A job that stops progressing (paused, throttled to nothing) drops to 0
 * within a window.  The ETA is the remaining progress at that rate, in
 * whole seconds rounded up.
 *
 * The arithmetic is on explicit times (the window functions), so that it
 * is tested without clocks; job_rate_init() feeds a window per job from
 * the job listeners with CLOCK_MONOTONIC.
 */
#ifndef STRATA_JOB_RATE_H
#define STRATA_JOB_RATE_H

#include <stdbool.h>
#include <stdint.h>
#include "strata/job.h"

#define JOB_RATE_WINDOW_NS (5 * 1000000000LL)
/* Samples closer than this to the newest one are not kept. */
#define JOB_RATE_SPACING_NS (100 * 1000000LL)
/* Less time than this since the base sample: no rate yet. */
#define JOB_RATE_MIN_SPAN_NS (500 * 1000000LL)
/* Enough samples at JOB_RATE_SPACING_NS to cover a window and one more. */
#define JOB_RATE_SAMPLES 64

typedef struct JobRateSample {
    int64_t t_ns;
    uint64_t done;
} JobRateSample;

typedef struct JobRateWindow {
    JobRateSample s[JOB_RATE_SAMPLES];   /* a ring, oldest at first */
    unsigned first, count;
} JobRateWindow;

/* Progress `done` at time now_ns. */
void job_rate_window_add(JobRateWindow *w, int64_t now_ns, uint64_t done);
/* Forget everything (the job restarts its count). */
void job_rate_window_reset(JobRateWindow *w);
/*
 * The rate at now_ns when the progress is `done` then; false while there
 * is no sample at least JOB_RATE_MIN_SPAN_NS old.
 */
bool job_rate_window_rate(const JobRateWindow *w, int64_t now_ns,
                          uint64_t done, int64_t *rate);
/*
 * Seconds until total at rate, rounded up: 0 when nothing remains; false
 * (unknown) when something remains and the rate is 0.
 */
bool job_rate_eta(int64_t rate, uint64_t done, uint64_t total,
                  int64_t *eta_s);

/* Track every job from now on (idempotent). */
void job_rate_init(void);
/*
 * What query-jobs reports for job: false for each value that is unknown
 * (never tracked, not running, paused or ready, or too young).
 */
void job_rate_get(const Job *job, bool *has_rate, int64_t *rate,
                  bool *has_eta, int64_t *eta_s);

#endif
