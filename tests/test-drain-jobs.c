/*
 * Drains and the jobs above the drained nodes, wherever the drain is begun
 * or ended: a drained section starts only once every job of the drained
 * nodes has reached its pause point (paused / standby said), and its end
 * resumes them before it returns (running / ready said), as QEMU 7.2's
 * bdrv_drained_begin/end, whose aio_co_wake() enters an idle job at once
 * outside a coroutine and which hop out of a coroutine to do so.  strata
 * runs QMP commands in coroutines: a failing transaction of one while a
 * READY mirror ran sent one standby/ready pair where QEMU sends two.
 *
 * The jobs are a test driver that goes ready (or not) and then waits idle
 * or sleeps, or keeps a request in flight on the node.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <string.h>
#include <cmocka.h>
#include "strata/block-driver.h"
#include "strata/coroutine.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "support.h"

/* ---- The test driver ---- */

typedef struct DJob {
    Job common;
    bool ready;              /* go ready first, as a mirror does */
    int64_t sleep_ns;        /* per round; < 0: job_yield() instead */
    bool slow_io;            /* each round keeps a 1 ms "request" busy */
    int rounds, io_started, io_done;
} DJob;

static int coroutine_fn dj_run(Job *job, GError **errp)
{
    DJob *d = (DJob *)job;
    if (d->ready) {
        job_transition_to_ready(job);
    }
    while (!job_is_cancelled(job)) {
        if (d->slow_io) {
            d->io_started++;
            co_sleep_ns(1000000);
            d->io_done++;
        }
        d->rounds++;
        if (d->sleep_ns < 0) {
            job_yield(job);
        } else {
            job_sleep_ns(job, d->sleep_ns);
        }
    }
    return -ECANCELED;
}

static const JobDriver dj_driver = {
    .instance_size = sizeof(DJob),
    .job_type = JOB_TYPE_MIRROR,
    .run = dj_run,
};

/* ---- Events ---- */

static GString *events;
static unsigned listener;

static void record(Job *job, JobEvent ev, JobStatus old, void *opaque)
{
    if (ev == JOB_EVENT_STATUS_CHANGE) {
        g_string_append_printf(events, "%s:%s ", job->id,
                               job_status_name(job->status));
    }
}

static int setup(void **state)
{
    events = g_string_new("");
    listener = job_add_listener(record, NULL);
    return 0;
}

static int teardown(void **state)
{
    job_remove_listener(listener);
    g_string_free(events, TRUE);
    return 0;
}

/* ---- Helpers ---- */

/* Named apart per test: a failed test leaves its nodes behind. */
static BlockNode *open_named(const char *name)
{
    static int serial;
    g_autofree char *unique = g_strdup_printf("%s%d", name, serial++);
    return open_json(json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver", "raw",
                               "node-name", unique, "file", "driver",
                               "null-co", "size", "1M"));
}

/* A job using bs, started, parked (idle) in READY or RUNNING. */
static DJob *new_job(const char *id, BlockNode *bs, bool ready,
                     int64_t sleep_ns)
{
    GError *err = NULL;
    DJob *d = job_create(id, &dj_driver, NULL, 0, NULL, NULL, &err);
    if (!d) {
        fail_msg("job_create: %s", err->message);
    }
    d->ready = ready;
    d->sleep_ns = sleep_ns;
    assert_non_null(job_add_node(&d->common, "source", bs,
                                 BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL,
                                 &err));
    job_start(&d->common);
    LOOP_WAIT_WHILE(d->common.busy);
    return d;
}

static void cancel(DJob *d)
{
    assert_int_equal(job_cancel_sync(&d->common, true), -ECANCELED);
}

/* What a coroutine saw: the events so far, at each of its steps. */
typedef struct {
    BlockNode *bs;
    DJob *job;
    char *seen[6];
    int n;
} Steps;

static void step(Steps *s)
{
    g_assert(s->n < (int)G_N_ELEMENTS(s->seen));
    s->seen[s->n++] = g_strdup(events->str);
    g_string_truncate(events, 0);
}

static void steps_free(Steps *s)
{
    for (int i = 0; i < s->n; i++) {
        g_free(s->seen[i]);
    }
}

/* ---- A drain from a coroutine (a QMP command) ---- */

static void coroutine_fn drain_node_co(void *opaque)
{
    Steps *s = opaque;
    node_drain_begin(s->bs);
    step(s);
    node_drain_end(s->bs);
    step(s);
}

/*
 * A READY job parked idle: the drain returns with it in standby, its end
 * with it ready again, before the coroutine goes on.
 */
static void test_coroutine_drain_ready_job(void **state)
{
    BlockNode *bs = open_named("n");
    DJob *d = new_job("m", bs, true, -1);
    g_string_truncate(events, 0);
    Steps s = { .bs = bs };
    co_run_sync(drain_node_co, &s);
    assert_string_equal(s.seen[0], "m:standby ");
    assert_string_equal(s.seen[1], "m:ready ");
    steps_free(&s);
    cancel(d);
    node_unref(bs);
}

/* The same for a job that sleeps between rounds (a timer armed). */
static void test_coroutine_drain_sleeping_job(void **state)
{
    BlockNode *bs = open_named("n");
    DJob *d = new_job("j", bs, false, 60 * 1000000000LL);
    g_string_truncate(events, 0);
    Steps s = { .bs = bs };
    co_run_sync(drain_node_co, &s);
    assert_string_equal(s.seen[0], "j:paused ");
    assert_string_equal(s.seen[1], "j:running ");
    steps_free(&s);
    /* Resumed, it went on to its next round and sleeps again. */
    assert_int_equal(d->rounds, 2);
    cancel(d);
    node_unref(bs);
}

/*
 * What a transaction of one does: everything drained and released, then
 * the action's node drained and (the action failing) released.  Two
 * pairs, as QEMU's bdrv_drain_all() then drained_begin(bs).
 */
static void coroutine_fn txn_co(void *opaque)
{
    Steps *s = opaque;
    drain_all_begin();
    step(s);
    drain_all_end();
    step(s);
    node_drain_begin(s->bs);
    step(s);
    node_drain_end(s->bs);
    step(s);
}

static void test_coroutine_drain_all_then_node(void **state)
{
    BlockNode *bs = open_named("n");
    DJob *d = new_job("m", bs, true, -1);
    g_string_truncate(events, 0);
    Steps s = { .bs = bs };
    co_run_sync(txn_co, &s);
    assert_string_equal(s.seen[0], "m:standby ");
    assert_string_equal(s.seen[1], "m:ready ");
    assert_string_equal(s.seen[2], "m:standby ");
    assert_string_equal(s.seen[3], "m:ready ");
    steps_free(&s);
    cancel(d);
    node_unref(bs);
}

/* Nested drains from a coroutine: one pause, one resume at the last end. */
static void coroutine_fn nested_co(void *opaque)
{
    Steps *s = opaque;
    node_drain_begin(s->bs);
    drain_all_begin();
    node_drain_begin(s->bs);
    step(s);
    node_drain_end(s->bs);
    drain_all_end();
    step(s);
    node_drain_end(s->bs);
    step(s);
}

static void test_coroutine_drain_nested(void **state)
{
    BlockNode *bs = open_named("n");
    DJob *d = new_job("m", bs, true, -1);
    g_string_truncate(events, 0);
    Steps s = { .bs = bs };
    co_run_sync(nested_co, &s);
    assert_string_equal(s.seen[0], "m:standby ");
    assert_string_equal(s.seen[1], "");
    assert_string_equal(s.seen[2], "m:ready ");
    steps_free(&s);
    cancel(d);
    node_unref(bs);
}

/*
 * A job with a request in flight on the drained node: the drain from a
 * coroutine waits for it, and for the job's pause point after it.
 */
static void coroutine_fn busy_co(void *opaque)
{
    Steps *s = opaque;
    node_drain_begin(s->bs);
    /* Seen from inside the drained section. */
    s->seen[s->n++] = g_strdup_printf("%d/%d %s %s", s->job->io_done,
                                      s->job->io_started,
                                      s->job->common.busy ? "busy" : "idle",
                                      job_status_name(s->job->common.status));
    node_drain_end(s->bs);
    step(s);
}

static void test_coroutine_drain_busy_job(void **state)
{
    BlockNode *bs = open_named("n");
    GError *err = NULL;
    DJob *d = job_create("j", &dj_driver, NULL, 0, NULL, NULL, &err);
    assert_non_null(d);
    d->slow_io = true;
    assert_non_null(job_add_node(&d->common, "source", bs,
                                 BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL,
                                 &err));
    job_start(&d->common);
    /* job_start ran it up to its first wait: inside the "request". */
    assert_int_equal(d->io_started, 1);
    assert_int_equal(d->io_done, 0);
    g_string_truncate(events, 0);
    Steps s = { .bs = bs, .job = d };
    co_run_sync(busy_co, &s);
    assert_string_equal(s.seen[0], "1/1 idle paused");
    assert_string_equal(s.seen[1], "j:paused j:running ");
    steps_free(&s);
    cancel(d);
    node_unref(bs);
}

/* Two jobs on two roots: drain_all from a coroutine pauses both. */
static void coroutine_fn drain_all_co(void *opaque)
{
    Steps *s = opaque;
    drain_all_begin();
    step(s);
    drain_all_end();
    step(s);
}

static void test_coroutine_drain_all_two_jobs(void **state)
{
    BlockNode *a = open_named("a");
    BlockNode *b = open_named("b");
    DJob *ja = new_job("ja", a, true, -1);
    DJob *jb = new_job("jb", b, false, -1);
    g_string_truncate(events, 0);
    Steps s = { 0 };
    co_run_sync(drain_all_co, &s);
    /* Roots oldest first, as QEMU walks its nodes. */
    assert_string_equal(s.seen[0], "ja:standby jb:paused ");
    assert_string_equal(s.seen[1], "ja:ready jb:running ");
    steps_free(&s);
    cancel(ja);
    cancel(jb);
    node_unref(a);
    node_unref(b);
}

/* A user pause outlives the drain: its end does not resume the job. */
static void test_coroutine_drain_user_paused(void **state)
{
    BlockNode *bs = open_named("n");
    DJob *d = new_job("m", bs, true, -1);
    g_string_truncate(events, 0);
    assert_true(job_user_pause(&d->common, NULL));
    /* Outside a coroutine the pause parks the job at once. */
    assert_string_equal(events->str, "m:standby ");
    g_string_truncate(events, 0);
    Steps s = { .bs = bs };
    co_run_sync(drain_node_co, &s);
    assert_string_equal(s.seen[0], "");
    assert_string_equal(s.seen[1], "");
    steps_free(&s);
    assert_int_equal(d->common.status, JOB_STATUS_STANDBY);
    assert_true(job_user_resume(&d->common, NULL));
    LOOP_WAIT_WHILE(d->common.status != JOB_STATUS_READY);
    cancel(d);
    node_unref(bs);
}

/*
 * A reopen drains the nodes it reopens, not every node (QEMU 7.2's
 * bdrv_reopen drains the node's subtree): a job elsewhere says nothing,
 * one above the node pauses and resumes.
 */
static void test_reopen_drains_its_nodes(void **state)
{
    GError *err = NULL;
    BlockNode *a = open_named("a");
    BlockNode *b = open_named("b");
    DJob *d = new_job("m", b, true, -1);
    g_string_truncate(events, 0);
    assert_true(node_reopen(a, NULL, false, &err));
    assert_string_equal(events->str, "");
    assert_true(node_reopen(b, NULL, false, &err));
    assert_string_equal(events->str, "m:standby m:ready ");
    cancel(d);
    node_unref(a);
    node_unref(b);
}

/* ---- The same outside a coroutine ---- */

/* The end resumes the job at once, as it pauses it at once. */
static void test_drain_end_resumes_at_once(void **state)
{
    BlockNode *bs = open_named("n");
    DJob *d = new_job("m", bs, true, -1);
    g_string_truncate(events, 0);
    node_drain_begin(bs);
    assert_string_equal(events->str, "m:standby ");
    node_drain_end(bs);
    assert_string_equal(events->str, "m:standby m:ready ");
    drain_all_begin();
    drain_all_end();
    node_drain_begin(bs);
    node_drain_end(bs);
    assert_string_equal(events->str, "m:standby m:ready m:standby m:ready "
                        "m:standby m:ready ");
    cancel(d);
    node_unref(bs);
}

/* A cancelled job is not run by a drain's end: the cancel wakes it. */
static void test_drain_end_cancelled_job(void **state)
{
    BlockNode *bs = open_named("n");
    DJob *d = new_job("j", bs, false, -1);
    node_drain_begin(bs);
    job_ref(&d->common);
    job_cancel(&d->common, true);
    node_drain_end(bs);
    LOOP_WAIT_WHILE(d->common.status != JOB_STATUS_NULL);
    job_unref(&d->common);
    node_unref(bs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_coroutine_drain_ready_job,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_coroutine_drain_sleeping_job,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_coroutine_drain_all_then_node,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_coroutine_drain_nested,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_coroutine_drain_busy_job,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_coroutine_drain_all_two_jobs,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_coroutine_drain_user_paused,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_drains_its_nodes,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_end_resumes_at_once,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_end_cancelled_job,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
