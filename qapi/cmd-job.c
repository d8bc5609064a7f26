/*
 * The job commands (query-jobs, job-*) and blockdev-create, which starts
 * a job (x-blockdev-amend is job-amend.c's).  The work is the job
 * layer's (strata/job.h); the verbs' checks and messages are its own,
 * QEMU 7.2's.  A verb that wakes the job lets it run to its next wait
 * before the reply, as QEMU's (qmp_job_settle(), cmd-block-job.c).
 */
#include "strata/coroutine.h"
#include "strata/job.h"
#include "strata/job-rate.h"
#include "qapi-commands.h"
#include "qapi-visit.h"
#include "job-settle.h"
#include "job-info-hook.h"

void qmp_job_pause(const char *id, GError **errp)
{
    Job *job = job_find_err(id, errp);
    if (job && job_user_pause(job, errp)) {
        qmp_job_settle(id);
    }
}

void qmp_job_resume(const char *id, GError **errp)
{
    Job *job = job_find_err(id, errp);
    if (job && job_user_resume(job, errp)) {
        qmp_job_settle(id);
    }
}

void qmp_job_cancel(const char *id, GError **errp)
{
    Job *job = job_find_err(id, errp);
    if (job) {
        /* QEMU's job-cancel is always forced. */
        if (job_user_cancel(job, true, errp)) {
            qmp_job_settle(id);
        }
    }
}

void qmp_job_complete(const char *id, GError **errp)
{
    Job *job = job_find_err(id, errp);
    if (job && job_complete(job, errp)) {
        qmp_job_settle(id);
    }
}

void qmp_job_dismiss(const char *id, GError **errp)
{
    Job *job = job_find_err(id, errp);
    if (job) {
        job_dismiss(job, errp);
    }
}

void qmp_job_finalize(const char *id, GError **errp)
{
    Job *job = job_find_err(id, errp);
    if (job) {
        job_finalize(job, errp);
    }
}

static GSList *info_hooks;      /* JobInfoHook * (as data pointers) */

void qmp_query_jobs_add_hook(JobInfoHook *fn)
{
    if (!g_slist_find(info_hooks, (gpointer)fn)) {
        info_hooks = g_slist_append(info_hooks, (gpointer)fn);
    }
}

JobInfoList *qmp_query_jobs(GError **errp)
{
    (void)errp;
    GPtrArray *all = job_query_all();
    JobInfoList *head = NULL, **tail = &head;
    for (guint i = 0; i < all->len; i++) {
        JobQueryInfo *q = g_ptr_array_index(all, i);
        JobInfo *info = g_new0(JobInfo, 1);
        info->id = g_strdup(q->id);
        info->type = q->type;
        info->status = q->status;
        info->current_progress = q->current_progress;
        info->total_progress = q->total_progress;
        info->error = g_strdup(q->error);
        Job *job = job_find(q->id);
        if (job) {
            job_rate_get(job, &info->has_x_strata_rate, &info->x_strata_rate,
                         &info->has_x_strata_eta, &info->x_strata_eta);
            for (GSList *h = info_hooks; h; h = h->next) {
                ((JobInfoHook *)h->data)(job, info);
            }
        }
        JobInfoList *node = g_new0(JobInfoList, 1);
        node->value = info;
        *tail = node;
        tail = &node->next;
    }
    g_ptr_array_free(all, TRUE);
    return head;
}

/*
 * QEMU's monitor sends a reply after the main loop's pending work: a job
 * its command started or woke has run up to its next wait by then, and
 * if it left its run without waiting (a creation refused before any I/O,
 * a cancel reaching a job asleep in its rate limit), its completion has
 * run to its end too, so the client sees the job's aborting, concluded
 * (and null) events before the command's return (qsd 7.2, for a cancel
 * of a commit or a stream asleep at speed 1 as in QEMU's 141; the
 * golden 141 was made where the cancel found the job in its I/O, which
 * answers first).  A job that waits
 * for I/O finishes after the return.  Here the request runs in a
 * coroutine and job_start() only schedules the job's: step aside through
 * the loop until the job waits, or its scheduled completion has reached
 * a state it stays in: concluded or null, or pending or waiting for a
 * finalize or its transaction.  Aborting is not one (job_is_completed()
 * counts it): the completion goes on to the cancelled event.
 */
static bool completion_running(const Job *job)
{
    if (!job->deferred) {
        return false;
    }
    switch (job->status) {
    case JOB_STATUS_WAITING:
    case JOB_STATUS_PENDING:
    case JOB_STATUS_CONCLUDED:
    case JOB_STATUS_NULL:
        return false;
    default:
        return true;
    }
}

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
    } while (completion_running(job));
    job_unref(job);
}

void qmp_blockdev_create(const char *job_id, BlockdevCreateOptions *options,
                         GError **errp)
{
    json_t *opts = qapi_BlockdevCreateOptions_to_json(options);
    if (blockdev_create_job(job_id, opts, errp)) {
        qmp_job_settle(job_id);
    }
    json_decref(opts);
}
