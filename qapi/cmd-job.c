/*
 * The job commands (query-jobs, job-*) and the commands that start jobs
 * (blockdev-create, x-blockdev-amend).  The work is the job layer's,
 * reached through job-link.h.
 */
#include "qapi-commands.h"
#include "qapi-visit.h"
#include "job-link.h"

void qmp_job_pause(const char *id, GError **errp)
{
    qmp_job_act(id, QMP_JOB_PAUSE, errp);
}

void qmp_job_resume(const char *id, GError **errp)
{
    qmp_job_act(id, QMP_JOB_RESUME, errp);
}

void qmp_job_cancel(const char *id, GError **errp)
{
    qmp_job_act(id, QMP_JOB_CANCEL, errp);
}

void qmp_job_complete(const char *id, GError **errp)
{
    qmp_job_act(id, QMP_JOB_COMPLETE, errp);
}

void qmp_job_dismiss(const char *id, GError **errp)
{
    qmp_job_act(id, QMP_JOB_DISMISS, errp);
}

void qmp_job_finalize(const char *id, GError **errp)
{
    qmp_job_act(id, QMP_JOB_FINALIZE, errp);
}

JobInfoList *qmp_query_jobs(GError **errp)
{
    (void)errp;
    size_t n;
    QmpJobRow *rows = qmp_job_rows(&n);
    JobInfoList *head = NULL, **tail = &head;
    for (size_t i = 0; i < n; i++) {
        JobInfo *info = g_new0(JobInfo, 1);
        info->id = g_steal_pointer(&rows[i].id);
        info->type = (JobType)rows[i].type;
        info->status = (JobStatus)rows[i].status;
        info->current_progress = rows[i].current;
        info->total_progress = rows[i].total;
        info->error = g_steal_pointer(&rows[i].error);
        JobInfoList *node = g_new0(JobInfoList, 1);
        node->value = info;
        *tail = node;
        tail = &node->next;
    }
    qmp_job_rows_free(rows, n);
    return head;
}

void qmp_blockdev_create(const char *job_id, BlockdevCreateOptions *options,
                         GError **errp)
{
    json_t *opts = qapi_BlockdevCreateOptions_to_json(options);
    qmp_job_create(job_id, opts, errp);
    json_decref(opts);
}

void qmp_x_blockdev_amend(const char *job_id, const char *node_name,
                          BlockdevAmendOptions *options, bool has_force,
                          bool force, GError **errp)
{
    json_t *opts = qapi_BlockdevAmendOptions_to_json(options);
    qmp_job_amend(job_id, node_name, opts, has_force && force, errp);
    json_decref(opts);
}
