/*
 * query-block-jobs and the block-job-* verbs (QEMU 7.2's blockdev.c):
 * each finds a block job by id with DeviceNotActive "Block job 'x' not
 * found" (other jobs are not found either), then does what the job-*
 * verb does, with the differences QEMU has: block-job-cancel is soft
 * unless forced and refuses a paused job; set-speed exists only here.
 *
 * A verb that wakes the job lets it run up to its next wait before the
 * reply (qmp_job_settle()): QEMU's handlers run outside coroutines and
 * enter the job directly, so a client sees e.g. the paused status or a
 * cancelled job's whole end before the reply.
 */
#include "strata/blockjob.h"
#include "strata/error.h"
#include "qapi-commands.h"
#include "job-settle.h"

BlockJobInfoList *qmp_query_block_jobs(GError **errp)
{
    (void)errp;
    GPtrArray *all = block_job_query_all();
    BlockJobInfoList *head = NULL, **tail = &head;
    for (guint i = 0; i < all->len; i++) {
        BlockJobQueryInfo *q = g_ptr_array_index(all, i);
        BlockJobInfo *info = g_new0(BlockJobInfo, 1);
        info->type = g_strdup(q->type);
        info->device = g_strdup(q->device);
        info->len = q->len;
        info->offset = q->offset;
        info->busy = q->busy;
        info->paused = q->paused;
        info->speed = q->speed;
        info->io_status = q->io_status;
        info->ready = q->ready;
        info->status = q->status;
        info->auto_finalize = q->auto_finalize;
        info->auto_dismiss = q->auto_dismiss;
        info->error = g_strdup(q->error);
        BlockJobInfoList *node = g_new0(BlockJobInfoList, 1);
        node->value = info;
        *tail = node;
        tail = &node->next;
    }
    g_ptr_array_free(all, TRUE);
    return head;
}

void qmp_block_job_set_speed(const char *device, int64_t speed, GError **errp)
{
    BlockJob *bjob = block_job_find_err(device, errp);
    if (bjob) {
        if (job_set_speed(&bjob->job, speed, errp)) {
            qmp_job_settle(device);
        }
    }
}

void qmp_block_job_cancel(const char *device, bool has_force, bool force,
                          GError **errp)
{
    BlockJob *bjob = block_job_find_err(device, errp);
    if (!bjob) {
        return;
    }
    force = has_force && force;
    /* A soft cancel would leave the job paused where it is: QEMU refuses. */
    if (job_user_paused(&bjob->job) && !force) {
        error_setg(errp, "The block job for device '%s' is currently paused",
                   device);
        return;
    }
    if (job_user_cancel(&bjob->job, force, errp)) {
        qmp_job_settle(device);
    }
}

void qmp_block_job_pause(const char *device, GError **errp)
{
    BlockJob *bjob = block_job_find_err(device, errp);
    if (bjob) {
        if (job_user_pause(&bjob->job, errp)) {
            qmp_job_settle(device);
        }
    }
}

void qmp_block_job_resume(const char *device, GError **errp)
{
    BlockJob *bjob = block_job_find_err(device, errp);
    if (bjob) {
        if (job_user_resume(&bjob->job, errp)) {
            qmp_job_settle(device);
        }
    }
}

void qmp_block_job_complete(const char *device, GError **errp)
{
    BlockJob *bjob = block_job_find_err(device, errp);
    if (bjob) {
        if (job_complete(&bjob->job, errp)) {
            qmp_job_settle(device);
        }
    }
}

void qmp_block_job_finalize(const char *id, GError **errp)
{
    BlockJob *bjob = block_job_find_err(id, errp);
    if (bjob) {
        /* Finalizing may dismiss the job (auto-dismiss). */
        job_ref(&bjob->job);
        job_finalize(&bjob->job, errp);
        job_unref(&bjob->job);
    }
}

void qmp_block_job_dismiss(const char *id, GError **errp)
{
    BlockJob *bjob = block_job_find_err(id, errp);
    if (bjob) {
        job_dismiss(&bjob->job, errp);
    }
}
