/*
 * The job side of the QMP job commands (see job-link.h for why it is a
 * file of its own).
 */
#include "strata/coroutine.h"
#include "strata/job.h"
#include "job-link.h"

bool qmp_job_act(const char *id, QmpJobAction act, GError **errp)
{
    Job *job = job_find_err(id, errp);
    if (!job) {
        return false;
    }
    switch (act) {
    case QMP_JOB_PAUSE:
        return job_user_pause(job, errp);
    case QMP_JOB_RESUME:
        return job_user_resume(job, errp);
    case QMP_JOB_CANCEL:
        return job_user_cancel(job, true, errp);
    case QMP_JOB_COMPLETE:
        return job_complete(job, errp);
    case QMP_JOB_DISMISS:
        return job_dismiss(job, errp);
    case QMP_JOB_FINALIZE:
        return job_finalize(job, errp);
    }
    g_assert_not_reached();
}

QmpJobRow *qmp_job_rows(size_t *count)
{
    GPtrArray *all = job_query_all();
    QmpJobRow *rows = g_new0(QmpJobRow, all->len + 1);
    for (guint i = 0; i < all->len; i++) {
        JobInfo *info = g_ptr_array_index(all, i);
        rows[i] = (QmpJobRow){
            .id = g_strdup(info->id),
            .type = (int)info->type,
            .status = (int)info->status,
            .current = info->current_progress,
            .total = info->total_progress,
            .error = g_strdup(info->error),
        };
    }
    *count = all->len;
    g_ptr_array_free(all, TRUE);
    return rows;
}

void qmp_job_rows_free(QmpJobRow *rows, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        g_free(rows[i].id);
        g_free(rows[i].error);
    }
    g_free(rows);
}

/*
 * QEMU's monitor sends a reply after the main loop's pending work: a job
 * its command started has run up to its first wait by then, and if it
 * ended without waiting (a creation refused before any I/O), its
 * completion has run too, so the client sees the job's aborting and
 * concluded events before the command's return.  A job that waits for
 * I/O finishes after the return.  Here the request runs in a coroutine
 * and job_start() only schedules the job's: step aside through the loop
 * until the job waits, or its scheduled completion has run.
 */
void qmp_job_settle(const char *job_id)
{
    Job *job = job_find(job_id);
    if (!job || !in_coroutine()) {
        return;
    }
    job_ref(job);
    do {
        co_wake(co_self());
        co_yield();
    } while (job->deferred && !job_is_completed(job));
    job_unref(job);
}

bool qmp_job_create(const char *job_id, json_t *options, GError **errp)
{
    if (!blockdev_create_job(job_id, options, errp)) {
        return false;
    }
    qmp_job_settle(job_id);
    return true;
}

typedef struct Watch {
    void (*fn)(const char *id, int status);
} Watch;

static void status_changed(Job *job, JobEvent ev, JobStatus old,
                           void *opaque)
{
    Watch *w = opaque;
    (void)old;
    /* QEMU sends JOB_STATUS_CHANGE for jobs with an id only. */
    if (ev == JOB_EVENT_STATUS_CHANGE && !job_is_internal(job)) {
        w->fn(job->id, (int)job->status);
    }
}

void qmp_job_watch(void (*fn)(const char *id, int status))
{
    /* Lives as long as the program: the daemon watches until it exits. */
    Watch *w = g_new(Watch, 1);
    w->fn = fn;
    job_add_listener(status_changed, w);
}

void qmp_job_cancel_all(void)
{
    job_cancel_sync_all();
}
