/*
 * x-strata-block-check and x-strata-query-block-check: strata-img check
 * as a job on a node in use (strata/check-online.h does the work).
 *
 * The job is a plain job, not a block job: it moves no data, has no
 * on-error policy, and appears in query-jobs with type
 * "x-strata-block-check" (strata's own JobType value, named x-strata- as
 * the machine snapshot jobs' are, so that clients of QEMU's schema can
 * tell it from theirs).  It holds a reference to the node, not an edge: an edge would
 * make the job a parent of the node, and the drain it starts would wait
 * for the job itself.  Its result stays readable until the job is
 * dismissed.
 */
#include <errno.h>
#include <string.h>
#include "strata/check-online.h"
#include "strata/error.h"
#include "strata/job.h"
#include "qapi-commands.h"
#include "qapi-visit.h"
#include "job-settle.h"

/* Problem lines kept for the query: enough for a person to read. */
#define CHECK_MESSAGES_MAX 1000

typedef struct CheckJob {
    Job common;
    BlockNode *bs;
    char *node_name;
    bool done;                   /* res and stats are the check's */
    BlockCheckResult res;
    OnlineCheckStats stats;
    GPtrArray *messages;
} CheckJob;

static const JobDriver check_job_driver;

static void check_report(void *opaque, const char *line)
{
    CheckJob *s = opaque;
    if (s->messages->len < CHECK_MESSAGES_MAX) {
        g_ptr_array_add(s->messages, g_strdup(line));
    }
}

static void check_progress(void *opaque, uint64_t done, uint64_t total)
{
    CheckJob *s = opaque;
    Job *job = &s->common;
    if (total > job->progress_total) {
        job_progress_increase_remaining(job, total - job->progress_total);
    }
    if (done > job->progress_current) {
        job_progress_update(job, done - job->progress_current);
    }
}

static int coroutine_fn check_run(Job *job, GError **errp)
{
    CheckJob *s = (CheckJob *)job;

    job_pause_point(job);
    if (job_is_cancelled(job)) {
        return -ECANCELED;
    }
    int ret = node_co_check_online(s->bs, &s->res, &s->stats, check_report,
                                   check_progress, s, errp);
    s->done = ret >= 0;
    return ret;
}

static void check_free(Job *job)
{
    CheckJob *s = (CheckJob *)job;
    node_unref(s->bs);
    g_free(s->node_name);
    g_ptr_array_free(s->messages, TRUE);
}

static const JobDriver check_job_driver = {
    .instance_size = sizeof(CheckJob),
    .job_type = JOB_TYPE_X_STRATA_BLOCK_CHECK,
    .run = check_run,
    .free = check_free,
};

void qmp_x_strata_block_check(const char *job_id, const char *node_name,
                              const char *repair, bool has_auto_dismiss,
                              bool auto_dismiss, GError **errp)
{
    BlockNode *bs;

    if (repair) {
        error_setg(errp, "x-strata-block-check does not repair: a repair "
                   "rewrites metadata the guest is using; stop using the "
                   "image and run strata-img check -r %s", repair);
        return;
    }
    bs = node_find(node_name);
    if (!bs) {
        error_setg(errp, "Cannot find device='' nor node-name='%s'",
                   node_name);
        return;
    }
    if (strcmp(node_get_format_name(bs), "qcow2")) {
        error_setg(errp, "Node '%s' is not a qcow2 node: only qcow2 images "
                   "can be checked in use", node_name);
        return;
    }
    int flags = has_auto_dismiss && auto_dismiss ? JOB_DEFAULT
                                                 : JOB_MANUAL_DISMISS;
    CheckJob *s = job_create(job_id, &check_job_driver, NULL, flags, NULL,
                             NULL, errp);
    if (!s) {
        return;
    }
    node_ref(bs);
    s->bs = bs;
    s->node_name = g_strdup(node_name);
    s->messages = g_ptr_array_new_with_free_func(g_free);
    job_start(&s->common);
    qmp_job_settle(job_id);
}

/* A count qemu-img check --output=json prints only when it is not zero. */
#define SET_NONZERO(info, member, v) \
    do { \
        if (v) { \
            (info)->has_##member = true; \
            (info)->member = (v); \
        } \
    } while (0)

XStrataBlockCheckInfo *qmp_x_strata_query_block_check(const char *id,
                                                       GError **errp)
{
    Job *job = job_find_err(id, errp);
    if (!job) {
        return NULL;
    }
    if (job->driver != &check_job_driver) {
        error_setg(errp, "Job '%s' is not a check job", id);
        return NULL;
    }
    CheckJob *s = (CheckJob *)job;
    JobQueryInfo *q = job_query(job);
    XStrataBlockCheckInfo *info = g_new0(XStrataBlockCheckInfo, 1);

    info->id = g_strdup(id);
    info->node_name = g_strdup(s->node_name);
    info->status = q->status;
    info->current_progress = q->current_progress;
    info->total_progress = q->total_progress;
    info->error = g_strdup(q->error);
    job_query_info_free(q);
    if (s->done) {
        const BlockCheckResult *r = &s->res;
        info->has_check_errors = true;
        info->check_errors = r->check_errors;
        SET_NONZERO(info, image_end_offset, r->image_end_offset);
        SET_NONZERO(info, corruptions, r->corruptions);
        SET_NONZERO(info, leaks, r->leaks);
        SET_NONZERO(info, total_clusters, r->total_clusters);
        SET_NONZERO(info, allocated_clusters, r->allocated_clusters);
        SET_NONZERO(info, fragmented_clusters, r->fragmented_clusters);
        SET_NONZERO(info, compressed_clusters, r->compressed_clusters);
        strList **tail = &info->messages;
        for (guint i = 0; i < s->messages->len; i++) {
            strList *n = g_new0(strList, 1);
            n->value = g_strdup(s->messages->pdata[i]);
            *tail = n;
            tail = &n->next;
        }
    }
    if (s->done || s->stats.pause_ns) {
        info->has_metadata_bytes = true;
        info->metadata_bytes = s->stats.metadata_bytes;
        info->has_pause_ns = true;
        info->pause_ns = s->stats.pause_ns;
    }
    return info;
}
