/*
 * Block jobs (jobs/blockjob.c) and their QMP side (qapi/cmd-block-job.c,
 * qapi/job-events.c): creation and its errors (ids, the device-name
 * default, speed, permissions), which jobs are block jobs, the on-error
 * policies with QEMU 7.2's actions, a 'stop' pausing the job with its
 * io-status until a resume, query-block-jobs, and the BLOCK_JOB_* events
 * in their order among the JOB_STATUS_CHANGE events.
 *
 * The jobs are a test driver whose run() passes a pause point per
 * iteration and meets an I/O error where a test asks for one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <string.h>
#include <cmocka.h>
#include <glib/gstdio.h>
#include "strata/backend.h"
#include "strata/block.h"
#include "strata/block-ops.h"
#include "strata/blockjob.h"
#include "strata/coroutine.h"
#include "strata/error.h"
#include "strata/loop.h"
#include "strata/op-blockers.h"
#include "strata/qmp.h"
#include "strata/qmp-jobs.h"
#include "strata/qmp-server.h"
#include "qapi-commands.h"
#include "block-job-args.h"

/* ---- What the QMP layer sends ---- */

static GString *events;          /* "NAME {data} | ..." */

void qmp_event_send(const char *event, json_t *data)
{
    char *d = json_dumps(data, JSON_SORT_KEYS | JSON_COMPACT);
    /* JOB_STATUS_CHANGE shortened: "id:status". */
    if (!strcmp(event, "JOB_STATUS_CHANGE")) {
        g_string_append_printf(events, "%s:%s | ",
                               json_string_value(json_object_get(data, "id")),
                               json_string_value(json_object_get(data,
                                                                 "status")));
    } else {
        g_string_append_printf(events, "%s %s | ", event, d);
    }
    free(d);
    json_decref(data);
}

void qmp_server_at_shutdown(QmpShutdownPhase phase, void (*fn)(void))
{
    (void)phase;
    (void)fn;
}

void qmp_server_throttle_event(const char *event, unsigned period_ms)
{
    (void)event;
    (void)period_ms;
}

static const char *ev(void)
{
    return events->str;
}

static void ev_clear(void)
{
    g_string_truncate(events, 0);
}

/* ---- The test driver ---- */

typedef struct TestBJob {
    BlockJob common;
    int iterations;
    int done;
    int fail_at;                 /* iteration meeting an error; -1: none */
    int fail_times;              /* how often it fails there */
    int fail_errno;
    bool fail_read;
    BlockdevOnError on_err;
    bool ready_mode, should_complete;
    GString *actions;            /* what block_job_error_action() said */
} TestBJob;

static int coroutine_fn tb_run(Job *job, GError **errp)
{
    TestBJob *t = (TestBJob *)job;
    job_progress_set_remaining(job, t->iterations);
    while (t->done < t->iterations) {
        if (job_is_cancelled(job)) {
            return -ECANCELED;
        }
        if (t->done == t->fail_at && t->fail_times > 0) {
            t->fail_times--;
            BlockErrorAction a = block_job_error_action(&t->common, t->on_err,
                                                        t->fail_read,
                                                        t->fail_errno);
            g_string_append_printf(t->actions, "%s ",
                                   block_error_action_name(a));
            if (a == BLOCK_ERROR_ACTION_REPORT) {
                return -t->fail_errno;
            }
            if (a == BLOCK_ERROR_ACTION_STOP) {
                /* Parks here until resumed, then tries again. */
                job_pause_point(job);
                continue;
            }
        }
        t->done++;
        job_progress_update(job, 1);
        job_sleep_ns(job, 0);
    }
    if (t->ready_mode) {
        job_transition_to_ready(job);
        while (!t->should_complete && !job_is_cancelled(job)) {
            job_yield(job);
        }
    }
    return 0;
}

static void tb_complete(Job *job, GError **errp)
{
    ((TestBJob *)job)->should_complete = true;
    job_enter(job);
}

static void tb_free(Job *job)
{
    TestBJob *t = (TestBJob *)job;
    if (t->actions) {
        g_string_free(t->actions, TRUE);
    }
}

static const JobDriver tb_driver = {
    .instance_size = sizeof(TestBJob),
    .job_type = JOB_TYPE_BACKUP,
    .run = tb_run,
    .user_resume = block_job_user_resume,
    .complete = tb_complete,
    .free = tb_free,
};

static const JobDriver tb_driver_nocomplete = {
    .instance_size = sizeof(TestBJob),
    .job_type = JOB_TYPE_STREAM,
    .run = tb_run,
    .user_resume = block_job_user_resume,
    .free = tb_free,
};

/* A job that is not a block job, though its type could be one's. */
typedef struct PlainJob {
    Job common;
} PlainJob;

static int coroutine_fn plain_run(Job *job, GError **errp)
{
    while (!job_is_cancelled(job)) {
        job_yield(job);
    }
    return -ECANCELED;
}

static const JobDriver plain_driver = {
    .instance_size = sizeof(PlainJob),
    .job_type = JOB_TYPE_BACKUP,
    .run = plain_run,
};

static BlockNode *bs;

static BlockNode *open_null(void)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver", "raw",
                          "node-name", "top", "file", "driver", "null-co",
                          "size", "1M");
    BlockNode *n = node_open(NULL, o, NODE_O_RDWR, &err);
    if (!n) {
        fail_msg("open failed: %s", err->message);
    }
    return n;
}

static TestBJob *new_bjob_on(const JobDriver *drv, const char *id,
                             int iterations, int flags)
{
    GError *err = NULL;
    TestBJob *t = block_job_create(id, drv, NULL, bs,
                                   BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, 0,
                                   flags, NULL, NULL, &err);
    if (!t) {
        fail_msg("block_job_create: %s", err->message);
    }
    t->iterations = iterations;
    t->fail_at = -1;
    t->actions = g_string_new("");
    return t;
}

static TestBJob *new_bjob(const char *id, int iterations, int flags)
{
    return new_bjob_on(&tb_driver, id, iterations, flags);
}

static int setup(void **state)
{
    events = g_string_new("");
    bs = open_null();
    return 0;
}

static int teardown(void **state)
{
    g_string_free(events, TRUE);
    /* Every test leaves no job behind, and no reference on the node. */
    assert_null(job_next(NULL));
    node_unref(bs);
    assert_null(node_find("top"));
    return 0;
}

/* The message of *err, which is cleared. */
static char *err_msg(GError **err)
{
    assert_non_null(*err);
    char *m = g_strdup((*err)->message);
    g_clear_error(err);
    return m;
}

/* ---- Creation ---- */

static void test_create_errors(void **state)
{
    GError *err = NULL;
    g_autofree char *m1 = NULL, *m2 = NULL, *m3 = NULL, *m4 = NULL;

    assert_null(block_job_create("1x", &tb_driver, NULL, bs,
                                 BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, 0,
                                 0, NULL, NULL, &err));
    m1 = err_msg(&err);
    assert_string_equal(m1, "Invalid job ID '1x'");

    /* No id: the device's name, and the daemon's nodes have none. */
    assert_null(block_job_create(NULL, &tb_driver, NULL, bs,
                                 BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, 0,
                                 0, NULL, NULL, &err));
    m2 = err_msg(&err);
    assert_string_equal(m2, "Invalid job ID ''");
    assert_string_equal(ev(), "");

    /* A bad speed: created, then dismissed again, as QEMU. */
    assert_null(block_job_create("s", &tb_driver, NULL, bs,
                                 BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, -1,
                                 0, NULL, NULL, &err));
    m3 = err_msg(&err);
    assert_string_equal(m3, "Parameter 'speed' expects a non-negative value");
    assert_string_equal(ev(), "s:created | s:null | ");
    assert_null(job_find("s"));

    /* The main node edge's permissions are checked like any parent's. */
    ev_clear();
    BlockBackend *blk = blk_new(BLK_PERM_WRITE, BLK_PERM_ALL);
    assert_true(blk_insert_node(blk, bs, NULL));
    assert_null(block_job_create("p", &tb_driver, NULL, bs,
                                 BLK_PERM_CONSISTENT_READ,
                                 BLK_PERM_CONSISTENT_READ, 0, 0, NULL, NULL,
                                 &err));
    m4 = err_msg(&err);
    assert_non_null(strstr(m4, "unshared by backup job 'p' (uses node 'top' "
                           "as 'main node' child)"));
    assert_string_equal(ev(), "p:created | p:null | ");
    assert_null(job_find("p"));
    blk_unref(blk);

    TestBJob *t = new_bjob("dup", 1, 0);
    assert_null(block_job_create("dup", &tb_driver, NULL, bs,
                                 BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, 0,
                                 0, NULL, NULL, &err));
    g_autofree char *m5 = err_msg(&err);
    assert_string_equal(m5, "Job ID 'dup' already in use");
    job_cancel_sync(&t->common.job, true);
}

static void test_create_device_name_id(void **state)
{
    BlockBackend *blk = blk_new(0, BLK_PERM_ALL);
    assert_true(blk_insert_node(blk, bs, NULL));
    blk_set_name(blk, "drive0");
    TestBJob *t = new_bjob(NULL, 1, 0);
    assert_string_equal(t->common.job.id, "drive0");
    assert_ptr_equal(block_job_find("drive0"), &t->common);
    assert_ptr_equal(t->common.bs, bs);
    g_autofree char *desc = child_parent_desc(t->common.job.nodes->data);
    assert_string_equal(desc, "backup job 'drive0'");
    assert_string_equal(child_name(t->common.job.nodes->data), "main node");
    assert_int_equal(t->common.iostatus, BLOCK_DEVICE_IO_STATUS_OK);
    job_start(&t->common.job);
    LOOP_WAIT_WHILE(job_find("drive0"));
    blk_unref(blk);
}

static void test_speed_at_create(void **state)
{
    GError *err = NULL;
    TestBJob *t = block_job_create("sp", &tb_driver, NULL, bs,
                                   BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL,
                                   1048576, 0, NULL, NULL, &err);
    assert_non_null(t);
    t->actions = g_string_new("");
    assert_int_equal(t->common.job.speed, 1048576);
    BlockJobQueryInfo *q = block_job_query(&t->common);
    assert_int_equal(q->speed, 1048576);
    block_job_query_info_free(q);
    job_cancel_sync(&t->common.job, true);
}

/* An internal block job: no id, not listed, no events. */
static void test_internal(void **state)
{
    GError *err = NULL;
    TestBJob *t = block_job_create(NULL, &tb_driver, NULL, bs,
                                   BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, 0,
                                   JOB_INTERNAL, NULL, NULL, &err);
    assert_non_null(t);
    t->actions = g_string_new("");
    t->iterations = 2;
    t->fail_at = 1;
    t->fail_times = 1;
    t->fail_errno = EIO;
    t->on_err = BLOCKDEV_ON_ERROR_IGNORE;
    assert_true(job_is_block_job(&t->common.job));
    GPtrArray *all = block_job_query_all();
    assert_int_equal(all->len, 0);
    g_ptr_array_unref(all);
    assert_null(block_job_create("x", &tb_driver, NULL, bs,
                                 BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, 0,
                                 JOB_INTERNAL, NULL, NULL, &err));
    g_autofree char *m = err_msg(&err);
    assert_string_equal(m, "Cannot specify job ID for internal job");
    job_ref(&t->common.job);
    job_start(&t->common.job);
    LOOP_WAIT_WHILE(t->common.job.status != JOB_STATUS_NULL);
    assert_string_equal(t->actions->str, "ignore ");
    assert_string_equal(ev(), "");
    job_unref(&t->common.job);
}

/* ---- Which jobs are block jobs ---- */

static void test_find(void **state)
{
    GError *err = NULL;
    PlainJob *p = job_create("plain", &plain_driver, NULL, 0, NULL, NULL,
                             &err);
    assert_non_null(p);
    TestBJob *t = new_bjob("blk", 1, 0);

    assert_false(job_is_block_job(&p->common));
    assert_true(job_is_block_job(&t->common.job));
    assert_null(block_job_find("plain"));
    assert_null(block_job_find("nope"));
    assert_ptr_equal(block_job_find("blk"), &t->common);

    assert_null(block_job_find_err("plain", &err));
    assert_true(g_error_matches(err, STRATA_ERROR,
                                STRATA_ERROR_DEVICE_NOT_ACTIVE));
    g_autofree char *m = err_msg(&err);
    assert_string_equal(m, "Block job 'plain' not found");

    /* The block-job-* verbs do not see other jobs; job-* see all. */
    qmp_block_job_pause("plain", &err);
    g_autofree char *m2 = err_msg(&err);
    assert_string_equal(m2, "Block job 'plain' not found");
    qmp_block_job_dismiss("nope", &err);
    g_autofree char *m3 = err_msg(&err);
    assert_string_equal(m3, "Block job 'nope' not found");
    qmp_job_pause("plain", &err);
    assert_null(err);

    BlockJobInfoList *list = qmp_query_block_jobs(NULL);
    assert_non_null(list);
    assert_string_equal(list->value->device, "blk");
    assert_null(list->next);
    qapi_free_BlockJobInfoList(list);

    job_cancel_sync(&p->common, true);
    job_cancel_sync(&t->common.job, true);
}

/* ---- Error actions ---- */

static void test_error_action_table(void **state)
{
    static const struct {
        BlockdevOnError on_err;
        int error;
        BlockErrorAction action;
        BlockDeviceIoStatus io;
    } rows[] = {
        { BLOCKDEV_ON_ERROR_REPORT, EIO, BLOCK_ERROR_ACTION_REPORT,
          BLOCK_DEVICE_IO_STATUS_OK },
        { BLOCKDEV_ON_ERROR_REPORT, ENOSPC, BLOCK_ERROR_ACTION_REPORT,
          BLOCK_DEVICE_IO_STATUS_OK },
        { BLOCKDEV_ON_ERROR_IGNORE, EIO, BLOCK_ERROR_ACTION_IGNORE,
          BLOCK_DEVICE_IO_STATUS_OK },
        { BLOCKDEV_ON_ERROR_ENOSPC, EIO, BLOCK_ERROR_ACTION_REPORT,
          BLOCK_DEVICE_IO_STATUS_OK },
        { BLOCKDEV_ON_ERROR_ENOSPC, ENOSPC, BLOCK_ERROR_ACTION_STOP,
          BLOCK_DEVICE_IO_STATUS_NOSPACE },
        { BLOCKDEV_ON_ERROR_STOP, EIO, BLOCK_ERROR_ACTION_STOP,
          BLOCK_DEVICE_IO_STATUS_FAILED },
        { BLOCKDEV_ON_ERROR_STOP, ENOSPC, BLOCK_ERROR_ACTION_STOP,
          BLOCK_DEVICE_IO_STATUS_NOSPACE },
        /* QEMU 7.2: 'auto' is 'enospc' for a job. */
        { BLOCKDEV_ON_ERROR_AUTO, EIO, BLOCK_ERROR_ACTION_REPORT,
          BLOCK_DEVICE_IO_STATUS_OK },
        { BLOCKDEV_ON_ERROR_AUTO, ENOSPC, BLOCK_ERROR_ACTION_STOP,
          BLOCK_DEVICE_IO_STATUS_NOSPACE },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(rows); i++) {
        TestBJob *t = new_bjob("e", 1, 0);
        Job *job = &t->common.job;
        int pauses = job->pause_count;
        ev_clear();
        assert_int_equal(block_job_error_action(&t->common, rows[i].on_err,
                                                i % 2, rows[i].error),
                         rows[i].action);
        assert_int_equal(t->common.iostatus, rows[i].io);
        bool stop = rows[i].action == BLOCK_ERROR_ACTION_STOP;
        assert_int_equal(job->user_paused, stop);
        assert_int_equal(job->pause_count, pauses + stop);
        g_autofree char *want = g_strdup_printf(
            "BLOCK_JOB_ERROR {\"action\":\"%s\",\"device\":\"e\","
            "\"operation\":\"%s\"} | ",
            block_error_action_name(rows[i].action),
            i % 2 ? "read" : "write");
        assert_string_equal(ev(), want);
        job_cancel_sync(job, true);
    }
    assert_string_equal(blockdev_on_error_name(BLOCKDEV_ON_ERROR_AUTO),
                        "auto");
    assert_string_equal(block_device_io_status_name(
                            BLOCK_DEVICE_IO_STATUS_NOSPACE), "nospace");
}

static int resumes;

static void count_resume(BlockJob *bjob)
{
    resumes++;
}

/* A second stop keeps the first error's status and pauses once. */
static void test_error_stop_twice(void **state)
{
    TestBJob *t = new_bjob("e", 1, 0);
    Job *job = &t->common.job;
    int pauses = job->pause_count;
    block_job_error_action(&t->common, BLOCKDEV_ON_ERROR_STOP, false, EIO);
    block_job_error_action(&t->common, BLOCKDEV_ON_ERROR_ENOSPC, false,
                           ENOSPC);
    assert_int_equal(t->common.iostatus, BLOCK_DEVICE_IO_STATUS_FAILED);
    assert_int_equal(job->pause_count, pauses + 1);
    /* A user pause already there is the one a resume ends. */
    TestBJob *u = new_bjob("u", 1, 0);
    assert_true(job_user_pause(&u->common.job, NULL));
    pauses = u->common.job.pause_count;
    block_job_error_action(&u->common, BLOCKDEV_ON_ERROR_STOP, true, EIO);
    assert_int_equal(u->common.job.pause_count, pauses);
    assert_int_equal(u->common.iostatus, BLOCK_DEVICE_IO_STATUS_FAILED);
    u->common.on_resume = count_resume;
    assert_true(job_user_resume(&u->common.job, NULL));
    assert_int_equal(u->common.iostatus, BLOCK_DEVICE_IO_STATUS_OK);
    assert_int_equal(resumes, 1);
    job_cancel_sync(job, true);
    job_cancel_sync(&u->common.job, true);
}

static void error_listener(BlockJob *bjob, bool is_read,
                           BlockErrorAction action, void *opaque)
{
    g_string_append_printf(opaque, "%s:%s:%s ", bjob->job.id,
                           is_read ? "read" : "write",
                           block_error_action_name(action));
}

static void test_error_listener(void **state)
{
    GString *seen = g_string_new("");
    unsigned h = block_job_add_error_listener(error_listener, seen);
    TestBJob *t = new_bjob("l", 1, 0);
    block_job_error_action(&t->common, BLOCKDEV_ON_ERROR_IGNORE, true, EIO);
    block_job_remove_error_listener(h);
    block_job_error_action(&t->common, BLOCKDEV_ON_ERROR_REPORT, false, EIO);
    assert_string_equal(seen->str, "l:read:ignore ");
    g_string_free(seen, TRUE);
    job_cancel_sync(&t->common.job, true);
}

/* ---- Stop and resume in a running job ---- */

static BlockJobQueryInfo *query(const char *id)
{
    BlockJob *b = block_job_find(id);
    assert_non_null(b);
    return block_job_query(b);
}

static void test_stop_resume(void **state)
{
    GError *err = NULL;
    TestBJob *t = new_bjob("j", 4, 0);
    Job *job = &t->common.job;
    t->fail_at = 2;
    t->fail_times = 1;
    t->fail_errno = EIO;
    t->on_err = BLOCKDEV_ON_ERROR_STOP;
    job_start(job);
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_PAUSED || job->busy);
    assert_int_equal(t->done, 2);
    assert_string_equal(ev(), "j:created | j:running | BLOCK_JOB_ERROR "
                        "{\"action\":\"stop\",\"device\":\"j\","
                        "\"operation\":\"write\"} | j:paused | ");
    BlockJobQueryInfo *q = query("j");
    assert_true(q->paused);
    assert_false(q->busy);
    assert_int_equal(q->io_status, BLOCK_DEVICE_IO_STATUS_FAILED);
    assert_int_equal(q->status, JOB_STATUS_PAUSED);
    assert_int_equal(q->offset, 2);
    assert_int_equal(q->len, 4);
    block_job_query_info_free(q);

    /* A soft cancel of a stopped job is refused, as QEMU. */
    qmp_block_job_cancel("j", false, false, &err);
    g_autofree char *m = err_msg(&err);
    assert_string_equal(m, "The block job for device 'j' is currently "
                        "paused");
    /* It is user-paused: a pause is refused, a resume goes on. */
    qmp_block_job_pause("j", &err);
    g_autofree char *m2 = err_msg(&err);
    assert_string_equal(m2, "Job is already paused");

    ev_clear();
    qmp_block_job_resume("j", &err);
    assert_null(err);
    assert_int_equal(t->common.iostatus, BLOCK_DEVICE_IO_STATUS_OK);
    job_ref(job);
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_NULL);
    assert_int_equal(t->done, 4);
    assert_string_equal(t->actions->str, "stop ");
    assert_string_equal(ev(), "j:running | j:waiting | j:pending | "
                        "BLOCK_JOB_COMPLETED {\"device\":\"j\",\"len\":4,"
                        "\"offset\":4,\"speed\":0,\"type\":\"backup\"} | "
                        "j:concluded | j:null | ");
    job_unref(job);
}

/* ENOSPC under 'enospc': nospace, and job-resume ends it too. */
static void test_enospc_job_resume_then_cancel(void **state)
{
    GError *err = NULL;
    TestBJob *t = new_bjob("n", 4, 0);
    Job *job = &t->common.job;
    t->fail_at = 1;
    t->fail_times = 2;
    t->fail_errno = ENOSPC;
    t->fail_read = true;
    t->on_err = BLOCKDEV_ON_ERROR_ENOSPC;
    job_start(job);
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_PAUSED || job->busy);
    assert_int_equal(t->common.iostatus, BLOCK_DEVICE_IO_STATUS_NOSPACE);
    qmp_job_resume("n", &err);
    assert_null(err);
    assert_int_equal(t->common.iostatus, BLOCK_DEVICE_IO_STATUS_OK);
    /* It fails there once more and stops again. */
    LOOP_WAIT_WHILE(t->fail_times > 0 || job->status != JOB_STATUS_PAUSED ||
                    job->busy);
    assert_int_equal(t->common.iostatus, BLOCK_DEVICE_IO_STATUS_NOSPACE);
    ev_clear();
    /* A forced cancel ends the stop (and its io-status) and the job. */
    job_ref(job);
    qmp_block_job_cancel("n", true, true, &err);
    assert_null(err);
    assert_int_equal(t->common.iostatus, BLOCK_DEVICE_IO_STATUS_OK);
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_NULL);
    assert_string_equal(t->actions->str, "stop stop ");
    assert_string_equal(ev(), "n:running | n:aborting | BLOCK_JOB_CANCELLED "
                        "{\"device\":\"n\",\"len\":4,\"offset\":1,"
                        "\"speed\":0,\"type\":\"backup\"} | n:concluded | "
                        "n:null | ");
    job_unref(job);
}

/* 'report' fails the job: COMPLETED with the error, query shows it. */
static void test_report_fails_job(void **state)
{
    GError *err = NULL;
    TestBJob *t = new_bjob("r", 3, JOB_MANUAL_DISMISS);
    Job *job = &t->common.job;
    t->fail_at = 1;
    t->fail_times = 1;
    t->fail_errno = EIO;
    t->on_err = BLOCKDEV_ON_ERROR_REPORT;
    job_start(job);
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_CONCLUDED);
    assert_string_equal(ev(), "r:created | r:running | BLOCK_JOB_ERROR "
                        "{\"action\":\"report\",\"device\":\"r\","
                        "\"operation\":\"write\"} | r:aborting | "
                        "BLOCK_JOB_COMPLETED {\"device\":\"r\","
                        "\"error\":\"Input/output error\",\"len\":3,"
                        "\"offset\":1,\"speed\":0,\"type\":\"backup\"} | "
                        "r:concluded | ");
    BlockJobInfoList *list = qmp_query_block_jobs(NULL);
    assert_non_null(list);
    assert_string_equal(list->value->error, "Input/output error");
    assert_int_equal(list->value->status, JOB_STATUS_CONCLUDED);
    assert_false(list->value->auto_dismiss);
    assert_true(list->value->auto_finalize);
    qapi_free_BlockJobInfoList(list);
    /* Verbs of a concluded job: QEMU's state check. */
    qmp_block_job_set_speed("r", 1, &err);
    g_autofree char *m = err_msg(&err);
    assert_string_equal(m, "Job 'r' in state 'concluded' cannot accept "
                        "command verb 'set-speed'");
    ev_clear();
    qmp_block_job_dismiss("r", &err);
    assert_null(err);
    assert_string_equal(ev(), "r:null | ");
}

/* 'ignore' goes on: the job succeeds, the event says ignore. */
static void test_ignore_completes(void **state)
{
    TestBJob *t = new_bjob("i", 3, 0);
    Job *job = &t->common.job;
    t->fail_at = 0;
    t->fail_times = 1;
    t->fail_errno = EIO;
    t->fail_read = true;
    t->on_err = BLOCKDEV_ON_ERROR_IGNORE;
    job_ref(job);
    job_start(job);
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_NULL);
    assert_int_equal(job->ret, 0);
    assert_string_equal(ev(), "i:created | i:running | BLOCK_JOB_ERROR "
                        "{\"action\":\"ignore\",\"device\":\"i\","
                        "\"operation\":\"read\"} | i:waiting | i:pending | "
                        "BLOCK_JOB_COMPLETED {\"device\":\"i\",\"len\":3,"
                        "\"offset\":3,\"speed\":0,\"type\":\"backup\"} | "
                        "i:concluded | i:null | ");
    job_unref(job);
}

/* ---- Query, ready, pending, the other verbs ---- */

static void test_query_ready_pending(void **state)
{
    GError *err = NULL;
    TestBJob *t = new_bjob("q", 2, JOB_MANUAL_FINALIZE | JOB_MANUAL_DISMISS);
    Job *job = &t->common.job;
    t->ready_mode = true;

    BlockJobQueryInfo *q = query("q");
    assert_string_equal(q->type, "backup");
    assert_string_equal(q->device, "q");
    assert_int_equal(q->status, JOB_STATUS_CREATED);
    assert_true(q->paused);          /* not started counts as paused */
    assert_false(q->ready);
    assert_false(q->auto_finalize);
    assert_false(q->auto_dismiss);
    assert_int_equal(q->io_status, BLOCK_DEVICE_IO_STATUS_OK);
    assert_null(q->error);
    block_job_query_info_free(q);

    qmp_block_job_set_speed("q", -1, &err);
    g_autofree char *m0 = err_msg(&err);
    assert_string_equal(m0, "Parameter 'speed' expects a non-negative value");
    qmp_block_job_set_speed("q", 4096, &err);
    assert_null(err);

    job_start(job);
    qmp_block_job_complete("q", &err);
    g_autofree char *m1 = err_msg(&err);
    assert_string_equal(m1, "Job 'q' in state 'running' cannot accept "
                        "command verb 'complete'");
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_READY || job->busy);
    assert_string_equal(ev(), "q:created | q:running | q:ready | "
                        "BLOCK_JOB_READY {\"device\":\"q\",\"len\":2,"
                        "\"offset\":2,\"speed\":4096,\"type\":\"backup\"} | ");
    q = query("q");
    assert_true(q->ready);
    assert_false(q->paused);
    assert_false(q->busy);
    assert_int_equal(q->speed, 4096);
    assert_int_equal(q->status, JOB_STATUS_READY);
    block_job_query_info_free(q);

    /* Paused while ready: standby, still ready. */
    qmp_block_job_pause("q", &err);
    assert_null(err);
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_STANDBY || job->busy);
    q = query("q");
    assert_true(q->ready);
    assert_true(q->paused);
    block_job_query_info_free(q);
    qmp_block_job_resume("q", &err);
    assert_null(err);
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_READY || job->busy);

    ev_clear();
    qmp_block_job_finalize("q", &err);
    g_autofree char *m2 = err_msg(&err);
    assert_string_equal(m2, "Job 'q' in state 'ready' cannot accept "
                        "command verb 'finalize'");
    qmp_block_job_complete("q", &err);
    assert_null(err);
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_PENDING);
    assert_string_equal(ev(), "q:waiting | q:pending | BLOCK_JOB_PENDING "
                        "{\"id\":\"q\",\"type\":\"backup\"} | ");
    ev_clear();
    qmp_block_job_finalize("q", &err);
    assert_null(err);
    assert_string_equal(ev(), "BLOCK_JOB_COMPLETED {\"device\":\"q\","
                        "\"len\":2,\"offset\":2,\"speed\":4096,"
                        "\"type\":\"backup\"} | q:concluded | ");
    ev_clear();
    qmp_block_job_dismiss("q", &err);
    assert_null(err);
    assert_string_equal(ev(), "q:null | ");
}

static void test_complete_unsupported(void **state)
{
    GError *err = NULL;
    TestBJob *t = new_bjob_on(&tb_driver_nocomplete, "c", 1, 0);
    t->ready_mode = true;
    job_start(&t->common.job);
    LOOP_WAIT_WHILE(t->common.job.status != JOB_STATUS_READY);
    qmp_block_job_complete("c", &err);
    g_autofree char *m = err_msg(&err);
    assert_string_equal(m, "The active block job 'c' cannot be completed");
    job_cancel_sync(&t->common.job, true);
}

/* query-block-jobs: block jobs with ids only, newest first. */
static void test_query_all(void **state)
{
    TestBJob *a = new_bjob("a", 1, 0);
    PlainJob *p = job_create("plain", &plain_driver, NULL, 0, NULL, NULL,
                             NULL);
    TestBJob *b = new_bjob_on(&tb_driver_nocomplete, "b", 1, 0);
    BlockJobInfoList *list = qmp_query_block_jobs(NULL);
    assert_non_null(list);
    assert_string_equal(list->value->device, "b");
    assert_string_equal(list->value->type, "stream");
    assert_non_null(list->next);
    assert_string_equal(list->next->value->device, "a");
    assert_string_equal(list->next->value->type, "backup");
    assert_null(list->next->next);
    qapi_free_BlockJobInfoList(list);
    job_cancel_sync(&a->common.job, true);
    job_cancel_sync(&p->common, true);
    job_cancel_sync(&b->common.job, true);
    assert_null(qmp_query_block_jobs(NULL));
}

/*
 * From a QMP request's coroutine: a verb that wakes the job lets it run
 * to its next wait first, so its events come before the reply, as QEMU's.
 */
typedef struct {
    char *after_pause, *after_resume, *after_cancel;
    bool done;
} VerbRun;

static void coroutine_fn verbs_co(void *opaque)
{
    VerbRun *r = opaque;
    GError *err = NULL;
    ev_clear();
    qmp_block_job_pause("v", &err);
    r->after_pause = g_strdup(ev());
    ev_clear();
    qmp_block_job_resume("v", &err);
    r->after_resume = g_strdup(ev());
    ev_clear();
    qmp_block_job_cancel("v", true, true, &err);
    r->after_cancel = g_strdup(ev());
    assert_null(err);
    r->done = true;
}

static void test_verbs_settle(void **state)
{
    VerbRun r = { 0 };
    TestBJob *t = new_bjob("v", 1 << 30, 0);
    job_start(&t->common.job);
    co_enter(co_create(verbs_co, &r));
    LOOP_WAIT_WHILE(!r.done);
    assert_string_equal(r.after_pause, "v:paused | ");
    assert_string_equal(r.after_resume, "v:running | ");
    /* The whole end of the cancelled job, before the reply. */
    assert_true(g_str_has_prefix(r.after_cancel, "v:aborting | "
                                 "BLOCK_JOB_CANCELLED {\"device\":\"v\","
                                 "\"len\":1073741824,\"offset\":"));
    assert_true(g_str_has_suffix(r.after_cancel, "\"speed\":0,\"type\":"
                                 "\"backup\"} | v:concluded | v:null | "));
    g_free(r.after_pause);
    g_free(r.after_resume);
    g_free(r.after_cancel);
}

/* The job keeps its main node until it is dismissed. */
static void test_main_node_reference(void **state)
{
    TestBJob *t = new_bjob("m", 1, JOB_MANUAL_DISMISS);
    node_unref(bs);
    bs = NULL;
    assert_non_null(node_find("top"));
    job_start(&t->common.job);
    LOOP_WAIT_WHILE(t->common.job.status != JOB_STATUS_CONCLUDED);
    assert_non_null(node_find("top"));
    assert_true(job_dismiss(&t->common.job, NULL));
    assert_null(node_find("top"));
    bs = open_null();
}

/* ---- The job commands' shared argument handling (block-job-args.c) ---- */

static void test_args_lookup(void **state)
{
    GError *err = NULL;
    assert_ptr_equal(bja_lookup_node("top", &err), bs);
    assert_null(bja_lookup_node("nope", &err));
    g_autofree char *m1 = err_msg(&err);
    assert_string_equal(m1, "Cannot find device='nope' nor node-name='nope'");

    assert_ptr_equal(bja_lookup_device("top", &err), bs);
    assert_null(bja_lookup_device("nope", &err));
    assert_true(g_error_matches(err, STRATA_ERROR,
                                STRATA_ERROR_DEVICE_NOT_FOUND));
    g_autofree char *m2 = err_msg(&err);
    assert_string_equal(m2, "Device 'nope' not found");

    /* A node that another node uses is no root. */
    assert_ptr_equal(bja_root_node("top", &err), bs);
    assert_null(bja_root_node(node_get_name(node_file(bs)), &err));
    g_autofree char *m3 = err_msg(&err);
    assert_string_equal(m3, "Need a root block node");
    assert_null(bja_root_node("nope", &err));
    g_autofree char *m4 = err_msg(&err);
    assert_string_equal(m4, "Cannot find device='nope' nor node-name='nope'");
}

static void test_args_defaults(void **state)
{
    assert_int_equal(bja_job_flags(false, false, false, false), JOB_DEFAULT);
    assert_int_equal(bja_job_flags(true, true, true, true), JOB_DEFAULT);
    assert_int_equal(bja_job_flags(true, false, false, false),
                     JOB_MANUAL_FINALIZE);
    assert_int_equal(bja_job_flags(false, true, true, false),
                     JOB_MANUAL_DISMISS);
    assert_int_equal(bja_job_flags(true, false, true, false),
                     JOB_MANUAL_FINALIZE | JOB_MANUAL_DISMISS);
    assert_int_equal(bja_on_error(false, BLOCKDEV_ON_ERROR_STOP),
                     BLOCKDEV_ON_ERROR_REPORT);
    assert_int_equal(bja_on_error(true, BLOCKDEV_ON_ERROR_AUTO),
                     BLOCKDEV_ON_ERROR_AUTO);
    assert_int_equal(bja_speed(false, 7), 0);
    assert_int_equal(bja_speed(true, 7), 7);
}

/* QEMU's op blockers: backing edges and block jobs. */
static void test_args_op_blockers(void **state)
{
    GError *err = NULL;
    g_autofree char *dir = g_dir_make_tmp("test-blockjob-XXXXXX", NULL);
    g_autofree char *base_path = g_build_filename(dir, "base.qcow2", NULL);
    g_autofree char *top_path = g_build_filename(dir, "top.qcow2", NULL);
    for (int i = 0; i < 2; i++) {
        if (!image_create("qcow2", i ? top_path : base_path,
                          json_pack("{s:i}", "size", 1048576), &err)) {
            fail_msg("%s", err->message);
        }
    }
    json_t *o = json_pack("{s:s, s:s, s:{s:s, s:s}, s:{s:s, s:s, s:{s:s, "
                          "s:s}}}", "driver", "qcow2", "node-name", "chain",
                          "file", "driver", "file", "filename", top_path,
                          "backing", "driver", "qcow2", "node-name", "base",
                          "file", "driver", "file", "filename", base_path);
    BlockNode *top = node_open(NULL, o, NODE_O_RDWR, &err);
    if (!top) {
        fail_msg("%s", err->message);
    }
    BlockNode *base = node_find("base");
    assert_non_null(base);

    static const BlockOpType blocked[] = { BLOCK_OP_COMMIT_SOURCE,
                                           BLOCK_OP_MIRROR_SOURCE,
                                           BLOCK_OP_MIRROR_TARGET };
    static const BlockOpType open_ops[] = { BLOCK_OP_COMMIT_TARGET,
                                            BLOCK_OP_STREAM,
                                            BLOCK_OP_BACKUP_SOURCE,
                                            BLOCK_OP_BACKUP_TARGET };
    for (size_t i = 0; i < G_N_ELEMENTS(blocked); i++) {
        assert_false(node_op_check(base, blocked[i], &err));
        g_autofree char *m = err_msg(&err);
        assert_string_equal(m, "Node 'base' is busy: node is used as "
                            "backing hd of 'chain'");
        err = NULL;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(open_ops); i++) {
        assert_true(node_op_check(base, open_ops[i], NULL));
        assert_true(node_op_check(top, open_ops[i], NULL));
    }
    assert_true(node_op_check(top, BLOCK_OP_MIRROR_SOURCE, NULL));

    /* A block job on a node blocks everything; the newest reason wins. */
    TestBJob *t = block_job_create("c", &tb_driver_nocomplete, NULL, base,
                                   0, BLK_PERM_ALL, 0, 0, NULL, NULL, &err);
    assert_non_null(t);
    t->actions = g_string_new("");
    for (BlockOpType op = BLOCK_OP_BACKUP_SOURCE; op <= BLOCK_OP_STREAM;
         op++) {
        assert_false(node_op_check(base, op, &err));
        g_autofree char *m = err_msg(&err);
        assert_string_equal(m, "Node 'base' is busy: block device is in use "
                            "by block job: stream");
        err = NULL;
    }
    assert_true(node_op_check(top, BLOCK_OP_MIRROR_SOURCE, NULL));
    /* A job that is no block job blocks nothing. */
    PlainJob *p = job_create("plain", &plain_driver, NULL, 0, NULL, NULL,
                             NULL);
    assert_non_null(job_add_node(&p->common, "x", top, 0, BLK_PERM_ALL,
                                 NULL));
    assert_true(node_op_check(top, BLOCK_OP_MIRROR_SOURCE, NULL));
    job_cancel_sync(&p->common, true);
    job_cancel_sync(&t->common.job, true);
    assert_true(node_op_check(top, BLOCK_OP_MIRROR_SOURCE, NULL));

    /* A job's own blocker (a mirror's replaces) is newer than the edges. */
    int owner;
    node_op_block_all(base, &owner, "block device is in use by "
                      "block-job-complete");
    for (BlockOpType op = BLOCK_OP_BACKUP_SOURCE; op <= BLOCK_OP_STREAM;
         op++) {
        assert_false(node_op_check(base, op, &err));
        g_autofree char *m = err_msg(&err);
        assert_string_equal(m, "Node 'base' is busy: block device is in use "
                            "by block-job-complete");
        err = NULL;
    }
    assert_true(node_op_check(top, BLOCK_OP_MIRROR_SOURCE, NULL));
    node_op_unblock_all(base, NULL);    /* another owner's: stays */
    assert_false(node_op_check(base, BLOCK_OP_STREAM, NULL));
    node_op_unblock_all(base, &owner);
    assert_true(node_op_check(base, BLOCK_OP_STREAM, NULL));

    node_unref(top);
    g_unlink(top_path);
    g_unlink(base_path);
    g_rmdir(dir);
}

int main(void)
{
    qmp_jobs_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_device_name_id, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_speed_at_create, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_internal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_action_table, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_error_stop_twice, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_error_listener, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enospc_job_resume_then_cancel,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_report_fails_job, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ignore_completes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_query_ready_pending, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_complete_unsupported, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_query_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_main_node_reference, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_verbs_settle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_args_lookup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_args_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_args_op_blockers, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
