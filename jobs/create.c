/*
 * blockdev-create as a job (QEMU 7.2's "create" job): the creation runs in
 * the job's coroutine; the job is created without auto-dismiss, as QEMU's,
 * so it stays concluded until job-dismiss.
 */
#include "strata/create.h"
#include "strata/error.h"
#include "strata/job.h"

typedef struct CreateJob {
    Job common;
    json_t *options;
} CreateJob;

static int coroutine_fn create_run(Job *job, GError **errp)
{
    CreateJob *s = (CreateJob *)job;
    /* One step: nothing to count inside a creation. */
    job_progress_set_remaining(job, 1);
    int ret = blockdev_co_create(s->options, errp);
    job_progress_update(job, 1);
    return ret;
}

static void create_free(Job *job)
{
    json_decref(((CreateJob *)job)->options);
}

static const JobDriver create_job_driver = {
    .instance_size = sizeof(CreateJob),
    .job_type = JOB_TYPE_CREATE,
    .run = create_run,
    .free = create_free,
};

bool blockdev_create_job(const char *job_id, json_t *options, GError **errp)
{
    const char *driver = json_string_value(json_object_get(options, "driver"));
    if (!driver) {
        error_setg(errp, "Parameter 'options.driver' is missing");
        return false;
    }
    if (!blockdev_create_check_driver(driver, errp)) {
        return false;
    }
    CreateJob *s = job_create(job_id, &create_job_driver, NULL,
                              JOB_MANUAL_DISMISS, NULL, NULL, errp);
    if (!s) {
        return false;
    }
    s->options = json_deep_copy(options);
    job_start(&s->common);
    return true;
}
