/*
 * The job layer as the QMP handlers see it.
 *
 * strata/job.h and the generated qapi-types.h both define JobStatus,
 * JobType and JobInfo (with the same values: QEMU's enums), so no file
 * includes both.  The files on the job side (job-link.c, job-amend.c)
 * include strata/job.h and offer what the handlers need here, in types
 * that clash with neither; the handlers (cmd-job.c) and the event
 * emitter (job-events.c) include the generated headers and this one.
 */
#ifndef QAPI_JOB_LINK_H
#define QAPI_JOB_LINK_H

#include <glib.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef enum {
    QMP_JOB_PAUSE,
    QMP_JOB_RESUME,
    QMP_JOB_CANCEL,              /* forced, as QEMU's job-cancel */
    QMP_JOB_COMPLETE,
    QMP_JOB_DISMISS,
    QMP_JOB_FINALIZE,
} QmpJobAction;

/* The verb on the job named id, with QEMU's errors ("Job not found", the
 * verb refused in the job's state). */
bool qmp_job_act(const char *id, QmpJobAction act, GError **errp);

/* One line of query-jobs; type and status are the enums' values, which
 * are the same on both sides. */
typedef struct QmpJobRow {
    char *id;
    int type, status;
    int64_t current, total;
    char *error;                 /* NULL: none */
} QmpJobRow;

/* Every job with an id, newest first; free with qmp_job_rows_free(). */
QmpJobRow *qmp_job_rows(size_t *count);
void qmp_job_rows_free(QmpJobRow *rows, size_t count);

/* blockdev-create: options is BlockdevCreateOptions as JSON (borrowed). */
bool qmp_job_create(const char *job_id, json_t *options, GError **errp);

/* x-blockdev-amend: options is BlockdevAmendOptions as JSON (borrowed). */
bool qmp_job_amend(const char *job_id, const char *node_name,
                   json_t *options, bool force, GError **errp);

/*
 * A job the calling request started: let it run until it first waits,
 * and finish at once if it ends without waiting, before the request's
 * reply goes out (see job-link.c).
 */
void qmp_job_settle(const char *job_id);

/* fn(id, status) on every status change of a job with an id. */
void qmp_job_watch(void (*fn)(const char *id, int status));

/* Force-cancel every job and wait for them (daemon shutdown). */
void qmp_job_cancel_all(void);

#endif
