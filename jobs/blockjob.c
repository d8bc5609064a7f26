/*
 * Block jobs (strata/blockjob.h): a job with a main node, an I/O status
 * and QEMU 7.2's on-error policies.
 *
 * Which jobs are block jobs is this file's own knowledge: a set filled
 * by block_job_create() and emptied when a job is dismissed (a job
 * listener), so that a job of another kind never passes for a BlockJob
 * whatever its type says.
 */
#include <errno.h>
#include <string.h>
#include "strata/blockjob.h"
#include "strata/block-ops.h"
#include "strata/error.h"

static const char *const on_error_names[BLOCKDEV_ON_ERROR__MAX] = {
    "report", "ignore", "enospc", "stop", "auto",
};
static const char *const action_names[BLOCK_ERROR_ACTION__MAX] = {
    "ignore", "report", "stop",
};
static const char *const io_status_names[BLOCK_DEVICE_IO_STATUS__MAX] = {
    "ok", "failed", "nospace",
};

const char *blockdev_on_error_name(BlockdevOnError e)
{
    return e < BLOCKDEV_ON_ERROR__MAX ? on_error_names[e] : NULL;
}

const char *block_error_action_name(BlockErrorAction a)
{
    return a < BLOCK_ERROR_ACTION__MAX ? action_names[a] : NULL;
}

const char *block_device_io_status_name(BlockDeviceIoStatus s)
{
    return s < BLOCK_DEVICE_IO_STATUS__MAX ? io_status_names[s] : NULL;
}

/* ---- Which jobs are block jobs ---- */

static GHashTable *block_jobs;      /* BlockJob * -> itself */

bool job_is_block_job(const Job *job)
{
    return block_jobs && g_hash_table_contains(block_jobs, job);
}

/*
 * A dismissed job is gone for QMP: forget it and let its main node go
 * (the job's edges stay until the job is freed; they hold their own
 * references).
 */
static void on_job_event(Job *job, JobEvent ev, JobStatus old, void *opaque)
{
    (void)old;
    (void)opaque;
    if (ev != JOB_EVENT_STATUS_CHANGE || job->status != JOB_STATUS_NULL ||
        !job_is_block_job(job)) {
        return;
    }
    BlockJob *bjob = (BlockJob *)job;
    g_hash_table_remove(block_jobs, job);
    if (bjob->bs) {
        node_unref(bjob->bs);
        bjob->bs = NULL;
    }
}

static void registry_init(void)
{
    if (!block_jobs) {
        block_jobs = g_hash_table_new(g_direct_hash, g_direct_equal);
        /* For as long as the program runs, as the set itself. */
        job_add_listener(on_job_event, NULL);
    }
}

static bool is_block_job_type(JobType t)
{
    return t == JOB_TYPE_COMMIT || t == JOB_TYPE_STREAM ||
           t == JOB_TYPE_MIRROR || t == JOB_TYPE_BACKUP;
}

void *block_job_create(const char *job_id, const JobDriver *driver,
                       JobTxn *txn, BlockNode *bs, uint64_t perm,
                       uint64_t shared, int64_t speed, int flags,
                       JobCompletionFunc *cb, void *opaque, GError **errp)
{
    g_assert(driver->instance_size >= sizeof(BlockJob));
    g_assert(is_block_job_type(driver->job_type));
    g_assert(driver->user_resume);

    /* QEMU 7.2: a job without an id is named after bs's device. */
    if (!job_id && !(flags & JOB_INTERNAL)) {
        job_id = node_device_name(bs);
    }
    BlockJob *bjob = job_create(job_id, driver, txn, flags, cb, opaque, errp);
    if (!bjob) {
        return NULL;
    }
    registry_init();
    g_hash_table_add(block_jobs, bjob);
    node_ref(bs);
    bjob->bs = bs;
    bjob->iostatus = BLOCK_DEVICE_IO_STATUS_OK;

    if (!job_add_node(&bjob->job, "main node", bs, perm, shared, errp) ||
        !job_set_speed(&bjob->job, speed, errp)) {
        job_early_fail(&bjob->job);
        return NULL;
    }
    return bjob;
}

BlockJob *block_job_find(const char *id)
{
    Job *job = job_find(id);
    return job && job_is_block_job(job) ? (BlockJob *)job : NULL;
}

BlockJob *block_job_find_err(const char *id, GError **errp)
{
    BlockJob *bjob = block_job_find(id);
    if (!bjob) {
        error_set_class(errp, STRATA_ERROR_DEVICE_NOT_ACTIVE,
                        "Block job '%s' not found", id);
    }
    return bjob;
}

/* ---- Errors ---- */

typedef struct {
    BlockJobErrorFunc *fn;
    void *opaque;
    unsigned handle;
} ErrorListener;

static GArray *error_listeners;
static unsigned next_handle = 1;

unsigned block_job_add_error_listener(BlockJobErrorFunc *fn, void *opaque)
{
    if (!error_listeners) {
        error_listeners = g_array_new(FALSE, FALSE, sizeof(ErrorListener));
    }
    ErrorListener l = { fn, opaque, next_handle++ };
    g_array_append_val(error_listeners, l);
    return l.handle;
}

void block_job_remove_error_listener(unsigned handle)
{
    for (guint i = 0; error_listeners && i < error_listeners->len; i++) {
        if (g_array_index(error_listeners, ErrorListener, i).handle ==
            handle) {
            g_array_remove_index(error_listeners, i);
            return;
        }
    }
}

static void notify_error(BlockJob *bjob, bool is_read,
                         BlockErrorAction action)
{
    if (!error_listeners || !error_listeners->len) {
        return;
    }
    /* A listener may add or remove listeners: walk a copy. */
    guint n = error_listeners->len;
    ErrorListener *copy = g_memdup2(error_listeners->data,
                                    n * sizeof(ErrorListener));
    for (guint i = 0; i < n; i++) {
        copy[i].fn(bjob, is_read, action, copy[i].opaque);
    }
    g_free(copy);
}

BlockErrorAction block_job_error_action(BlockJob *bjob, BlockdevOnError on_err,
                                        bool is_read, int error)
{
    BlockErrorAction action;

    switch (on_err) {
    case BLOCKDEV_ON_ERROR_ENOSPC:
    case BLOCKDEV_ON_ERROR_AUTO:
        action = error == ENOSPC ? BLOCK_ERROR_ACTION_STOP
                                 : BLOCK_ERROR_ACTION_REPORT;
        break;
    case BLOCKDEV_ON_ERROR_STOP:
        action = BLOCK_ERROR_ACTION_STOP;
        break;
    case BLOCKDEV_ON_ERROR_IGNORE:
        action = BLOCK_ERROR_ACTION_IGNORE;
        break;
    case BLOCKDEV_ON_ERROR_REPORT:
    default:
        action = BLOCK_ERROR_ACTION_REPORT;
        break;
    }
    /* QEMU sends BLOCK_JOB_ERROR before the job pauses. */
    notify_error(bjob, is_read, action);
    if (action == BLOCK_ERROR_ACTION_STOP) {
        Job *job = &bjob->job;
        /* A pause the user sees, so that the user's resume ends it. */
        if (!job->user_paused) {
            job_pause(job);
            job->user_paused = true;
        }
        if (bjob->iostatus == BLOCK_DEVICE_IO_STATUS_OK) {
            bjob->iostatus = error == ENOSPC ? BLOCK_DEVICE_IO_STATUS_NOSPACE
                                             : BLOCK_DEVICE_IO_STATUS_FAILED;
        }
    }
    return action;
}

void block_job_user_resume(Job *job)
{
    g_assert(job_is_block_job(job));
    BlockJob *bjob = (BlockJob *)job;
    if (bjob->iostatus != BLOCK_DEVICE_IO_STATUS_OK) {
        g_assert(job->user_paused && job->pause_count > 0);
        bjob->iostatus = BLOCK_DEVICE_IO_STATUS_OK;
    }
    if (bjob->on_resume) {
        bjob->on_resume(bjob);
    }
}

/* ---- query-block-jobs ---- */

BlockJobQueryInfo *block_job_query(BlockJob *bjob)
{
    Job *job = &bjob->job;
    BlockJobQueryInfo *info = g_new0(BlockJobQueryInfo, 1);
    info->type = job_type_name(job_type(job));
    info->device = g_strdup(job->id);
    info->len = (int64_t)job->progress_total;
    info->offset = (int64_t)job->progress_current;
    info->busy = job->busy;
    info->paused = job->pause_count > 0;
    info->ready = job_is_ready(job);
    info->speed = job->speed;
    info->io_status = bjob->iostatus;
    info->status = job->status;
    info->auto_finalize = job->auto_finalize;
    info->auto_dismiss = job->auto_dismiss;
    /* As QEMU: an error only once the job has failed (or was cancelled). */
    if (job->ret) {
        info->error = g_strdup(job->err ? job->err->message
                                        : g_strerror(-job->ret));
    }
    return info;
}

void block_job_query_info_free(BlockJobQueryInfo *info)
{
    if (info) {
        g_free(info->device);
        g_free(info->error);
        g_free(info);
    }
}

GPtrArray *block_job_query_all(void)
{
    GPtrArray *list = g_ptr_array_new_with_free_func(
        (GDestroyNotify)block_job_query_info_free);
    for (Job *job = job_next(NULL); job; job = job_next(job)) {
        if (!job_is_internal(job) && job_is_block_job(job)) {
            g_ptr_array_add(list, block_job_query((BlockJob *)job));
        }
    }
    return list;
}
