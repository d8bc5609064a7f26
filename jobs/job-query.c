/* query-jobs: what a job looks like from outside. */
#include "strata/job.h"

JobQueryInfo *job_query(const Job *job)
{
    JobQueryInfo *info = g_new0(JobQueryInfo, 1);
    info->id = g_strdup(job->id);
    info->type = job_type(job);
    info->status = job->status;
    info->current_progress = (int64_t)job->progress_current;
    info->total_progress = (int64_t)job->progress_total;
    info->error = job->err ? g_strdup(job->err->message) : NULL;
    return info;
}

void job_query_info_free(JobQueryInfo *info)
{
    if (info) {
        g_free(info->id);
        g_free(info->error);
        g_free(info);
    }
}

GPtrArray *job_query_all(void)
{
    GPtrArray *list = g_ptr_array_new_with_free_func(
        (GDestroyNotify)job_query_info_free);
    for (Job *job = job_next(NULL); job; job = job_next(job)) {
        if (!job_is_internal(job)) {
            g_ptr_array_add(list, job_query(job));
        }
    }
    return list;
}
