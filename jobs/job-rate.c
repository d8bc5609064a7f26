/* Jobs' progress rate and ETA (strata/job-rate.h). */
#include <glib.h>
#include "strata/job-rate.h"

void job_rate_window_reset(JobRateWindow *w)
{
    w->first = w->count = 0;
}

static const JobRateSample *sample(const JobRateWindow *w, unsigned i)
{
    return &w->s[(w->first + i) % JOB_RATE_SAMPLES];
}

void job_rate_window_add(JobRateWindow *w, int64_t now_ns, uint64_t done)
{
    if (w->count) {
        const JobRateSample *last = sample(w, w->count - 1);
        if (now_ns - last->t_ns < JOB_RATE_SPACING_NS) {
            return;
        }
    }
    JobRateSample s = { now_ns, done };
    if (w->count < JOB_RATE_SAMPLES) {
        w->s[(w->first + w->count++) % JOB_RATE_SAMPLES] = s;
    } else {
        w->s[w->first] = s;
        w->first = (w->first + 1) % JOB_RATE_SAMPLES;
    }
}

bool job_rate_window_rate(const JobRateWindow *w, int64_t now_ns,
                          uint64_t done, int64_t *rate)
{
    if (!w->count) {
        return false;
    }
    /* The newest sample a whole window old, else the oldest there is. */
    const JobRateSample *base = sample(w, 0);
    for (unsigned i = 1; i < w->count; i++) {
        const JobRateSample *s = sample(w, i);
        if (s->t_ns > now_ns - JOB_RATE_WINDOW_NS) {
            break;
        }
        base = s;
    }
    int64_t span = now_ns - base->t_ns;
    if (span < JOB_RATE_MIN_SPAN_NS) {
        return false;
    }
    uint64_t moved = done > base->done ? done - base->done : 0;
    /* moved * 1e9 / span without overflow for any realistic size */
    *rate = (int64_t)((double)moved * 1e9 / (double)span);
    return true;
}

bool job_rate_eta(int64_t rate, uint64_t done, uint64_t total,
                  int64_t *eta_s)
{
    if (done >= total) {
        *eta_s = 0;
        return true;
    }
    if (rate <= 0) {
        return false;
    }
    uint64_t left = total - done;
    *eta_s = (int64_t)((left + (uint64_t)rate - 1) / (uint64_t)rate);
    return true;
}

/* ---- Every job's window ---- */

static GHashTable *windows;         /* Job * -> JobRateWindow * */

static bool tracked_status(JobStatus s)
{
    return s == JOB_STATUS_RUNNING || s == JOB_STATUS_PAUSED ||
           s == JOB_STATUS_READY || s == JOB_STATUS_STANDBY;
}

static void on_job_event(Job *job, JobEvent ev, JobStatus old, void *opaque)
{
    (void)opaque;
    int64_t now = g_get_monotonic_time() * 1000;
    JobRateWindow *w = g_hash_table_lookup(windows, job);

    if (ev == JOB_EVENT_STATUS_CHANGE) {
        if (job->status == JOB_STATUS_NULL) {
            g_hash_table_remove(windows, job);
            return;
        }
        if (job->status == JOB_STATUS_RUNNING && old == JOB_STATUS_CREATED) {
            /* The clock starts with the job. */
            w = g_new0(JobRateWindow, 1);
            g_hash_table_replace(windows, job, w);
        }
    }
    if (w && (ev == JOB_EVENT_PROGRESS || ev == JOB_EVENT_STATUS_CHANGE)) {
        job_rate_window_add(w, now, job->progress_current);
    }
}

void job_rate_init(void)
{
    if (!windows) {
        windows = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL,
                                        g_free);
        job_add_listener(on_job_event, NULL);
    }
}

void job_rate_get(const Job *job, bool *has_rate, int64_t *rate,
                  bool *has_eta, int64_t *eta_s)
{
    *has_rate = *has_eta = false;
    JobRateWindow *w = windows ? g_hash_table_lookup(windows, job) : NULL;
    if (!w || !tracked_status(job->status)) {
        return;
    }
    int64_t now = g_get_monotonic_time() * 1000;
    if (!job_rate_window_rate(w, now, job->progress_current, rate)) {
        return;
    }
    *has_rate = true;
    *has_eta = job_rate_eta(*rate, job->progress_current, job->progress_total,
                            eta_s);
}
