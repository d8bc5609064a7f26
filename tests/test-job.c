/*
 * The job machinery: QEMU 7.2's transition and verb tables, the life cycle
 * with and without auto-finalize/auto-dismiss, pausing (user and internal,
 * before the start, through drain), cancellation at pause points and in
 * sleeps, transactions, ready/complete, ids, query, rate limiting.
 * The jobs are a test driver whose run() loops over pause points.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <string.h>
#include <cmocka.h>
#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/job.h"
#include "strata/loop.h"

/* ---- The test driver ---- */

/* What the hooks saw. */
typedef struct Counts {
    int prepared, committed, aborted, cleaned, paused_hook, resumed_hook;
} Counts;

typedef struct TestJob {
    Job common;
    int iterations;          /* pause points to pass; -1: until cancelled */
    int done;
    int run_ret;             /* what run() returns when not cancelled */
    bool quiet;              /* fail without a message of its own */
    int prepare_ret;
    bool gate;               /* run() waits in job_yield() while false */
    bool use_gate;
    bool ready_mode;         /* go ready, then wait for job-complete */
    bool should_complete;
    int64_t sleep_ns;        /* per iteration */
    BlockChild *io_child;    /* read through it every iteration */
    bool slow_io;            /* each iteration waits 1 ms while busy */
    int io_started, io_done;
    Counts own, *c;          /* c: own, or the test's if it outlives us */
    int *freed;
} TestJob;

static int coroutine_fn test_run(Job *job, GError **errp)
{
    TestJob *t = (TestJob *)job;
    job_progress_set_remaining(job, t->iterations > 0 ? t->iterations : 0);
    while (t->use_gate && !t->gate && !job_is_cancelled(job)) {
        job_yield(job);
    }
    for (; t->iterations < 0 || t->done < t->iterations; t->done++) {
        if (job_is_cancelled(job)) {
            return -ECANCELED;
        }
        if (t->io_child) {
            char buf[512];
            int ret = child_co_pread(t->io_child, 0, sizeof(buf), buf, 0);
            if (ret < 0) {
                return ret;
            }
        }
        if (t->slow_io) {
            /* Like a request in flight: busy, but not at a pause point. */
            t->io_started++;
            co_sleep_ns(1000000);
            t->io_done++;
        }
        job_progress_update(job, 1);
        /* Sleep 0 still goes through the loop, and is a pause point. */
        job_sleep_ns(job, t->sleep_ns);
    }
    if (t->ready_mode) {
        job_transition_to_ready(job);
        while (!t->should_complete && !job_is_cancelled(job)) {
            job_yield(job);
        }
    }
    if (t->run_ret && !t->quiet) {
        error_setg(errp, "test job failed on purpose");
    }
    return t->run_ret;
}

static int test_prepare(Job *job)
{
    TestJob *t = (TestJob *)job;
    t->c->prepared++;
    return t->prepare_ret;
}

static void test_commit(Job *job)
{
    ((TestJob *)job)->c->committed++;
}

static void test_abort(Job *job)
{
    ((TestJob *)job)->c->aborted++;
}

static void test_clean(Job *job)
{
    ((TestJob *)job)->c->cleaned++;
}

static void coroutine_fn test_pause(Job *job)
{
    ((TestJob *)job)->c->paused_hook++;
}

static void coroutine_fn test_resume(Job *job)
{
    ((TestJob *)job)->c->resumed_hook++;
}

static void test_complete(Job *job, GError **errp)
{
    TestJob *t = (TestJob *)job;
    t->should_complete = true;
    job_enter(job);
}

static void tj_free(Job *job)
{
    TestJob *t = (TestJob *)job;
    if (t->freed) {
        (*t->freed)++;
    }
}

static const JobDriver test_driver = {
    .instance_size = sizeof(TestJob),
    .job_type = JOB_TYPE_BACKUP,
    .run = test_run,
    .prepare = test_prepare,
    .commit = test_commit,
    .abort = test_abort,
    .clean = test_clean,
    .pause = test_pause,
    .resume = test_resume,
    .complete = test_complete,
    .free = tj_free,
};

/* The same job type without a complete callback. */
static const JobDriver test_driver_nocomplete = {
    .instance_size = sizeof(TestJob),
    .job_type = JOB_TYPE_CREATE,
    .run = test_run,
};

/* ---- Event recording ---- */

static GString *events;

static void record(Job *job, JobEvent ev, JobStatus old, void *opaque)
{
    if (ev == JOB_EVENT_STATUS_CHANGE && !job_is_internal(job)) {
        g_string_append_printf(events, "%s:%s ", job->id,
                               job_status_name(job->status));
    } else if (ev == JOB_EVENT_PENDING) {
        g_string_append_printf(events, "%s:PENDING-EV ", job->id);
    } else if (ev == JOB_EVENT_READY) {
        g_string_append_printf(events, "%s:READY-EV ", job->id);
    } else if (ev == JOB_EVENT_COMPLETED || ev == JOB_EVENT_CANCELLED) {
        g_string_append_printf(events, "%s:%s ", job->id,
                               ev == JOB_EVENT_COMPLETED ? "COMPLETED-EV"
                                                         : "CANCELLED-EV");
    }
}

static unsigned listener;

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
    /* Every test leaves no job behind. */
    assert_null(job_next(NULL));
    return 0;
}

static const char *ev(void)
{
    return events->str;
}

static void ev_clear(void)
{
    g_string_truncate(events, 0);
}

static TestJob *new_job(const char *id, int iterations, int flags,
                        JobTxn *txn)
{
    GError *err = NULL;
    TestJob *t = job_create(id, &test_driver, txn, flags, NULL, NULL, &err);
    if (!t) {
        fail_msg("job_create: %s", err->message);
    }
    t->iterations = iterations;
    t->c = &t->own;
    return t;
}

static void wait_status(Job *job, JobStatus s)
{
    LOOP_WAIT_WHILE(job->status != s);
}

static void wait_idle(Job *job)
{
    LOOP_WAIT_WHILE(job->busy);
}

/* ---- Tables ---- */

/*
 * QEMU 7.2's tables, one row per "from" state / verb, one letter per
 * state in enum order U C R P Y S W D X E N; '1' allowed.
 */
static const char *const stt[JOB_STATUS__MAX] = {
    /*          UCRPYSWDXEN */
    /* U */    "01000000000",
    /* C */    "00100000101",
    /* R */    "00011010100",
    /* P */    "00100000000",
    /* Y */    "00000110100",
    /* S */    "00001000000",
    /* W */    "00000001100",
    /* D */    "00000000110",
    /* X */    "00000000110",
    /* E */    "00000000001",
    /* N */    "00000000000",
};

static const char *const vt[JOB_VERB__MAX] = {
    /*                  UCRPYSWDXEN */
    [JOB_VERB_CANCEL] = "01111111000",
    [JOB_VERB_PAUSE] = "01111100000",
    [JOB_VERB_RESUME] = "01111100000",
    [JOB_VERB_SET_SPEED] = "01111100000",
    [JOB_VERB_COMPLETE] = "00001100000",
    [JOB_VERB_DISMISS] = "00000000010",
    [JOB_VERB_FINALIZE] = "00000001000",
};

static void test_tables(void **state)
{
    static const char *const snames[] = {
        "undefined", "created", "running", "paused", "ready", "standby",
        "waiting", "pending", "aborting", "concluded", "null",
    };
    static const char *const vnames[] = {
        "cancel", "pause", "resume", "set-speed", "complete", "dismiss",
        "finalize",
    };
    for (int s = 0; s < JOB_STATUS__MAX; s++) {
        assert_string_equal(job_status_name(s), snames[s]);
        for (int t = 0; t < JOB_STATUS__MAX; t++) {
            assert_int_equal(job_transition_allowed(s, t), stt[s][t] == '1');
        }
    }
    /* Every verb in every state, with the error QEMU gives. */
    Job fake = { .id = (char *)"x" };
    for (int v = 0; v < JOB_VERB__MAX; v++) {
        assert_string_equal(job_verb_name(v), vnames[v]);
        for (int s = 0; s < JOB_STATUS__MAX; s++) {
            GError *err = NULL;
            bool want = vt[v][s] == '1';
            fake.status = s;
            assert_int_equal(job_verb_allowed(v, s), want);
            assert_int_equal(job_apply_verb(&fake, v, &err), want);
            if (want) {
                assert_null(err);
            } else {
                g_autofree char *msg = g_strdup_printf(
                    "Job 'x' in state '%s' cannot accept command verb '%s'",
                    snames[s], vnames[v]);
                assert_non_null(err);
                assert_string_equal(err->message, msg);
                g_error_free(err);
            }
        }
    }
    assert_string_equal(job_type_name(JOB_TYPE_SNAPSHOT_DELETE),
                        "snapshot-delete");
    assert_string_equal(job_type_name(JOB_TYPE_CREATE), "create");
}

/* ---- Ids ---- */

static void test_ids(void **state)
{
    GError *err = NULL;
    assert_null(job_create("1abc", &test_driver, NULL, 0, NULL, NULL, &err));
    assert_string_equal(err->message, "Invalid job ID '1abc'");
    g_clear_error(&err);
    assert_null(job_create("a b", &test_driver, NULL, 0, NULL, NULL, &err));
    assert_string_equal(err->message, "Invalid job ID 'a b'");
    g_clear_error(&err);
    assert_null(job_create(NULL, &test_driver, NULL, 0, NULL, NULL, &err));
    assert_string_equal(err->message, "An explicit job ID is required");
    g_clear_error(&err);
    assert_null(job_create("j", &test_driver, NULL, JOB_INTERNAL, NULL, NULL,
                           &err));
    assert_string_equal(err->message,
                        "Cannot specify job ID for internal job");
    g_clear_error(&err);

    TestJob *a = new_job("a-1.b_c", 1, 0, NULL);
    assert_ptr_equal(job_find("a-1.b_c"), a);
    assert_null(job_create("a-1.b_c", &test_driver, NULL, 0, NULL, NULL,
                           &err));
    assert_string_equal(err->message, "Job ID 'a-1.b_c' already in use");
    g_clear_error(&err);
    assert_null(job_find_err("nope", &err));
    assert_string_equal(err->message, "Job not found");
    g_clear_error(&err);

    /* An internal job has no id and is not listed. */
    TestJob *in = job_create(NULL, &test_driver, NULL, JOB_INTERNAL, NULL,
                             NULL, &err);
    assert_non_null(in);
    assert_true(job_is_internal(&in->common));
    GPtrArray *list = job_query_all();
    assert_int_equal(list->len, 1);
    g_ptr_array_unref(list);

    job_early_fail(&in->common);
    job_early_fail(&a->common);
    assert_null(job_find("a-1.b_c"));
}

/* ---- Life cycle ---- */

static void test_auto_lifecycle(void **state)
{
    int freed = 0;
    TestJob *t = new_job("j", 3, 0, NULL);
    t->freed = &freed;
    assert_int_equal(t->common.status, JOB_STATUS_CREATED);
    job_start(&t->common);
    LOOP_WAIT_WHILE(!freed);
    assert_string_equal(ev(), "j:created j:running j:waiting j:pending "
                        "j:COMPLETED-EV j:concluded j:null ");
    assert_null(job_find("j"));
}

static void test_manual_finalize_dismiss(void **state)
{
    GError *err = NULL;
    int freed = 0;
    TestJob *t = new_job("j", 2, JOB_MANUAL_FINALIZE | JOB_MANUAL_DISMISS,
                         NULL);
    t->freed = &freed;
    job_start(&t->common);
    Job *job = &t->common;
    assert_false(job_finalize(job, &err));
    assert_string_equal(err->message, "Job 'j' in state 'running' cannot "
                        "accept command verb 'finalize'");
    g_clear_error(&err);
    wait_status(job, JOB_STATUS_PENDING);
    assert_int_equal(t->c->prepared, 0);
    assert_string_equal(ev(), "j:created j:running j:waiting j:pending "
                        "j:PENDING-EV ");
    assert_false(job_dismiss(job, &err));
    g_clear_error(&err);

    JobQueryInfo *info = job_query(job);
    assert_string_equal(info->id, "j");
    assert_int_equal(info->type, JOB_TYPE_BACKUP);
    assert_int_equal(info->status, JOB_STATUS_PENDING);
    assert_int_equal(info->current_progress, 2);
    assert_int_equal(info->total_progress, 2);
    assert_null(info->error);
    job_query_info_free(info);

    ev_clear();
    assert_true(job_finalize(job, &err));
    assert_int_equal(t->c->prepared, 1);
    assert_int_equal(t->c->committed, 1);
    assert_int_equal(t->c->aborted, 0);
    assert_int_equal(t->c->cleaned, 1);
    assert_string_equal(ev(), "j:COMPLETED-EV j:concluded ");
    assert_int_equal(job->status, JOB_STATUS_CONCLUDED);
    ev_clear();
    assert_true(job_dismiss(job, &err));
    assert_int_equal(freed, 1);
    assert_string_equal(ev(), "j:null ");
}

static void test_failure_recorded(void **state)
{
    TestJob *t = new_job("f", 1, JOB_MANUAL_DISMISS, NULL);
    t->run_ret = -EIO;
    job_start(&t->common);
    wait_status(&t->common, JOB_STATUS_CONCLUDED);
    assert_string_equal(ev(), "f:created f:running f:aborting "
                        "f:COMPLETED-EV f:concluded ");
    assert_int_equal(t->c->aborted, 1);
    assert_int_equal(t->c->committed, 0);
    GPtrArray *list = job_query_all();
    assert_int_equal(list->len, 1);
    JobQueryInfo *info = list->pdata[0];
    assert_string_equal(info->error, "test job failed on purpose");
    assert_int_equal(info->status, JOB_STATUS_CONCLUDED);
    g_ptr_array_unref(list);
    assert_true(job_dismiss(&t->common, NULL));
}

static void test_failure_without_message(void **state)
{
    TestJob *t = job_create("f", &test_driver_nocomplete, NULL,
                            JOB_MANUAL_DISMISS, NULL, NULL, NULL);
    t->iterations = 1;
    t->run_ret = -ENOSPC;
    t->quiet = true;
    job_start(&t->common);
    wait_status(&t->common, JOB_STATUS_CONCLUDED);
    /* Without a message of the driver's, strerror() as QEMU. */
    JobQueryInfo *info = job_query(&t->common);
    assert_string_equal(info->error, "No space left on device");
    job_query_info_free(info);
    assert_true(job_dismiss(&t->common, NULL));
}

/* ---- Pausing ---- */

static void test_user_pause_resume(void **state)
{
    GError *err = NULL;
    TestJob *t = new_job("p", -1, 0, NULL);
    Job *job = &t->common;
    job_start(job);
    assert_true(job_user_pause(job, &err));
    assert_false(job_user_pause(job, &err));
    assert_string_equal(err->message, "Job is already paused");
    g_clear_error(&err);
    wait_status(job, JOB_STATUS_PAUSED);
    wait_idle(job);
    assert_true(job->paused);
    assert_int_equal(t->c->paused_hook, 1);
    int done = t->done;
    /* Nothing runs while paused, however long the loop spins. */
    for (int i = 0; i < 20; i++) {
        loop_iterate(false);
    }
    assert_int_equal(t->done, done);
    /* A stray wake-up does not end the pause. */
    job_enter(job);
    for (int i = 0; i < 20; i++) {
        loop_iterate(false);
    }
    assert_int_equal(t->done, done);
    assert_int_equal(job->status, JOB_STATUS_PAUSED);

    assert_true(job_user_resume(job, &err));
    assert_false(job_user_resume(job, &err));
    assert_string_equal(err->message,
                        "Can't resume a job that was not paused");
    g_clear_error(&err);
    LOOP_WAIT_WHILE(t->done < done + 3);
    assert_int_equal(job->status, JOB_STATUS_RUNNING);
    assert_int_equal(t->c->resumed_hook, 1);
    assert_int_equal(job_cancel_sync(job, true), -ECANCELED);
    assert_string_equal(ev(), "p:created p:running p:paused p:running "
                        "p:aborting p:CANCELLED-EV p:concluded p:null ");
}

static void test_pause_before_start(void **state)
{
    TestJob *t = new_job("p", 2, 0, NULL);
    Job *job = &t->common;
    assert_true(job_user_pause(job, NULL));
    job_start(job);
    wait_status(job, JOB_STATUS_PAUSED);
    wait_idle(job);
    assert_int_equal(t->done, 0);
    assert_true(job_user_resume(job, NULL));
    LOOP_WAIT_WHILE(job_find("p"));
    assert_string_equal(ev(), "p:created p:running p:paused p:running "
                        "p:waiting p:pending p:COMPLETED-EV p:concluded "
                        "p:null ");
}

static void test_internal_pause_counting(void **state)
{
    TestJob *t = new_job("p", -1, 0, NULL);
    Job *job = &t->common;
    job_start(job);
    job_pause(job);                    /* say, a drain */
    assert_true(job_user_pause(job, NULL));
    wait_status(job, JOB_STATUS_PAUSED);
    job_resume(job);                   /* the drain ends */
    wait_idle(job);
    assert_int_equal(job->status, JOB_STATUS_PAUSED);
    assert_true(job_user_paused(job));
    job_pause(job);
    assert_true(job_user_resume(job, NULL));
    wait_idle(job);
    /* Still held by the internal pause. */
    assert_int_equal(job->status, JOB_STATUS_PAUSED);
    job_resume(job);
    int done = t->done;
    LOOP_WAIT_WHILE(t->done < done + 2);
    job_cancel_sync(job, true);
}

/*
 * A pause from outside a coroutine (a drain) parks an idle job at once,
 * as QEMU's aio_co_wake() enters the coroutine there: jobs drained one
 * after the other pause in that order even when another one's wake-up
 * (an I/O completion, here a stray job_enter()) is already queued.  The
 * daemon's shutdown drain relies on it for the order of its events.
 */
static void test_pause_enters_at_once(void **state)
{
    TestJob *a = new_job("a", 1, 0, NULL);
    TestJob *b = new_job("b", 1, 0, NULL);
    a->use_gate = b->use_gate = true;
    job_start(&a->common);
    job_start(&b->common);
    wait_status(&b->common, JOB_STATUS_RUNNING);
    wait_idle(&a->common);
    wait_idle(&b->common);
    ev_clear();
    job_enter(&b->common);
    job_pause(&a->common);
    assert_int_equal(a->common.status, JOB_STATUS_PAUSED);
    job_pause(&b->common);
    wait_status(&b->common, JOB_STATUS_PAUSED);
    assert_string_equal(ev(), "a:paused b:paused ");
    job_resume(&a->common);
    job_resume(&b->common);
    job_cancel_sync(&a->common, true);
    job_cancel_sync(&b->common, true);
}

/* ---- Cancellation ---- */

static void test_cancel_at_pause_point(void **state)
{
    TestJob *t = new_job("c", -1, 0, NULL);
    Counts kt = { 0 };
    t->c = &kt;
    Job *job = &t->common;
    job_start(job);
    assert_true(job_user_pause(job, NULL));
    wait_status(job, JOB_STATUS_PAUSED);
    wait_idle(job);
    ev_clear();
    assert_true(job_user_cancel(job, false, NULL));
    /* The cancel drops the user pause and wakes the job. */
    assert_false(job_user_paused(job));
    LOOP_WAIT_WHILE(job_find("c"));
    assert_int_equal(kt.aborted, 1);
    assert_int_equal(kt.committed, 0);
    assert_string_equal(ev(), "c:running c:aborting c:CANCELLED-EV "
                        "c:concluded c:null ");
}

static void test_cancel_in_sleep(void **state)
{
    TestJob *t = new_job("c", -1, JOB_MANUAL_DISMISS, NULL);
    Job *job = &t->common;
    t->sleep_ns = 3600LL * 1000000000;   /* an hour: only a cancel ends it */
    job_start(job);
    wait_idle(job);
    assert_non_null(job->sleep_timer);
    assert_true(job_user_cancel(job, true, NULL));
    assert_null(job->sleep_timer);
    wait_status(job, JOB_STATUS_CONCLUDED);
    JobQueryInfo *info = job_query(job);
    assert_string_equal(info->error, "Operation canceled");
    job_query_info_free(info);
    GError *err = NULL;
    assert_false(job_user_cancel(job, true, &err));
    assert_string_equal(err->message, "Job 'c' in state 'concluded' cannot "
                        "accept command verb 'cancel'");
    g_clear_error(&err);
    assert_true(job_dismiss(job, NULL));
}

static void test_cancel_created(void **state)
{
    int freed = 0;
    TestJob *t = new_job("c", 1, 0, NULL);
    t->freed = &freed;
    assert_true(job_user_cancel(&t->common, false, NULL));
    assert_int_equal(freed, 1);
    /* Never started: no completion events. */
    assert_string_equal(ev(), "c:created c:aborting c:concluded c:null ");
}

static void test_cancel_pending_and_concluded(void **state)
{
    TestJob *t = new_job("c", 1, JOB_MANUAL_FINALIZE | JOB_MANUAL_DISMISS,
                         NULL);
    job_start(&t->common);
    wait_status(&t->common, JOB_STATUS_PENDING);
    ev_clear();
    assert_true(job_user_cancel(&t->common, false, NULL));
    assert_int_equal(t->c->prepared, 0);
    assert_int_equal(t->c->aborted, 1);
    assert_string_equal(ev(), "c:aborting c:CANCELLED-EV c:concluded ");
    /* job_cancel() of a concluded job dismisses it (shutdown). */
    job_cancel_sync_all();
    assert_null(job_find("c"));
}

/* A QMP handler runs in a coroutine: the synchronous cancel must wait
 * from the loop, not on the handler's stack. */
typedef struct {
    Job *job;
    int ret;
} CoCancel;

static void co_cancel_entry(void *opaque)
{
    CoCancel *c = opaque;
    c->ret = job_cancel_sync(c->job, true);
}

static void test_cancel_sync_from_coroutine(void **state)
{
    TestJob *t = new_job("c", -1, JOB_MANUAL_DISMISS, NULL);
    job_start(&t->common);
    LOOP_WAIT_WHILE(t->done < 2);
    CoCancel c = { &t->common, 0 };
    co_run_sync(co_cancel_entry, &c);
    assert_int_equal(c.ret, -ECANCELED);
    assert_int_equal(t->common.status, JOB_STATUS_CONCLUDED);
    assert_true(job_dismiss(&t->common, NULL));
}

/* Shutdown: every job, whatever its state, cancelled and gone. */
static void test_cancel_sync_all(void **state)
{
    TestJob *run = new_job("run", -1, 0, NULL);
    TestJob *paused = new_job("paused", -1, 0, NULL);
    TestJob *pend = new_job("pend", 1, JOB_MANUAL_FINALIZE, NULL);
    TestJob *conc = new_job("conc", 1, JOB_MANUAL_DISMISS, NULL);
    new_job("created", 1, 0, NULL);
    job_start(&run->common);
    job_start(&paused->common);
    job_start(&pend->common);
    job_start(&conc->common);
    assert_true(job_user_pause(&paused->common, NULL));
    wait_status(&paused->common, JOB_STATUS_PAUSED);
    wait_status(&pend->common, JOB_STATUS_PENDING);
    wait_status(&conc->common, JOB_STATUS_CONCLUDED);
    job_cancel_sync_all();
    assert_null(job_next(NULL));
}

/* ---- Ready and complete ---- */

static void test_ready_complete(void **state)
{
    GError *err = NULL;
    TestJob *t = new_job("m", 2, 0, NULL);
    Job *job = &t->common;
    t->ready_mode = true;
    job_start(job);
    assert_false(job_complete(job, &err));
    assert_string_equal(err->message, "Job 'm' in state 'running' cannot "
                        "accept command verb 'complete'");
    g_clear_error(&err);
    wait_status(job, JOB_STATUS_READY);
    wait_idle(job);
    assert_true(job_is_ready(job));
    /* Paused while ready is standby. */
    assert_true(job_user_pause(job, NULL));
    wait_status(job, JOB_STATUS_STANDBY);
    assert_true(job_user_resume(job, NULL));
    wait_status(job, JOB_STATUS_READY);
    wait_idle(job);
    assert_true(job_complete(job, &err));
    LOOP_WAIT_WHILE(job_find("m"));
    assert_string_equal(ev(), "m:created m:running m:ready m:READY-EV "
                        "m:standby m:ready m:waiting m:pending "
                        "m:COMPLETED-EV m:concluded m:null ");
}

static void test_complete_unsupported(void **state)
{
    GError *err = NULL;
    TestJob *t = job_create("n", &test_driver_nocomplete, NULL, 0, NULL,
                            NULL, NULL);
    t->ready_mode = true;
    job_start(&t->common);
    wait_status(&t->common, JOB_STATUS_READY);
    assert_false(job_complete(&t->common, &err));
    assert_string_equal(err->message,
                        "The active block job 'n' cannot be completed");
    g_clear_error(&err);
    assert_int_equal(job_cancel_sync(&t->common, false), -ECANCELED);
}

/* ---- Transactions ---- */

static void test_txn_success(void **state)
{
    JobTxn *txn = job_txn_new();
    TestJob *a = new_job("a", 1, 0, txn);
    Counts ka = { 0 };
    a->c = &ka;
    TestJob *b = new_job("b", 1, 0, txn);
    Counts kb = { 0 };
    b->c = &kb;
    job_txn_unref(txn);
    b->use_gate = true;
    job_start(&a->common);
    job_start(&b->common);
    wait_status(&a->common, JOB_STATUS_WAITING);
    wait_idle(&b->common);
    /* a waits for b. */
    assert_int_equal(a->common.status, JOB_STATUS_WAITING);
    assert_int_equal(ka.prepared, 0);
    ev_clear();
    b->gate = true;
    job_enter(&b->common);
    LOOP_WAIT_WHILE(job_next(NULL));
    assert_int_equal(ka.committed + kb.committed, 2);
    assert_int_equal(ka.aborted + kb.aborted, 0);
    /* Both pending, then both prepared, then both finalized: newest
     * first, as QEMU's transaction list. */
    assert_string_equal(ev(), "b:waiting b:pending a:pending "
                        "b:COMPLETED-EV b:concluded b:null "
                        "a:COMPLETED-EV a:concluded a:null ");
}

static void test_txn_one_fails(void **state)
{
    JobTxn *txn = job_txn_new();
    TestJob *a = new_job("a", 1, 0, txn);
    Counts ka = { 0 };
    a->c = &ka;
    TestJob *b = new_job("b", -1, 0, txn);
    Counts kb = { 0 };
    b->c = &kb;
    TestJob *c = new_job("c", 1, 0, txn);
    Counts kc = { 0 };
    c->c = &kc;
    job_txn_unref(txn);
    c->use_gate = true;
    c->run_ret = -EIO;
    job_start(&a->common);
    job_start(&b->common);
    job_start(&c->common);
    wait_status(&a->common, JOB_STATUS_WAITING);
    wait_idle(&c->common);
    c->gate = true;
    job_enter(&c->common);
    LOOP_WAIT_WHILE(job_next(NULL));
    assert_int_equal(ka.committed + kb.committed + kc.committed, 0);
    assert_int_equal(ka.aborted, 1);
    assert_int_equal(kb.aborted, 1);
    assert_int_equal(kc.aborted, 1);
    assert_int_equal(ka.prepared + kb.prepared + kc.prepared, 0);
}

static void test_txn_prepare_fails(void **state)
{
    JobTxn *txn = job_txn_new();
    TestJob *a = new_job("a", 1, 0, txn);
    Counts ka = { 0 };
    a->c = &ka;
    TestJob *b = new_job("b", 1, 0, txn);
    Counts kb = { 0 };
    b->c = &kb;
    job_txn_unref(txn);
    b->prepare_ret = -EPERM;
    job_start(&a->common);
    job_start(&b->common);
    LOOP_WAIT_WHILE(job_next(NULL));
    /* b, the newest, is prepared first; its failure stops the rest. */
    assert_int_equal(kb.prepared, 1);
    assert_int_equal(ka.prepared, 0);
    assert_int_equal(ka.committed + kb.committed, 0);
    assert_int_equal(ka.aborted + kb.aborted, 2);
}

static void test_txn_cancel_one(void **state)
{
    JobTxn *txn = job_txn_new();
    TestJob *a = new_job("a", -1, 0, txn);
    Counts ka = { 0 };
    a->c = &ka;
    TestJob *b = new_job("b", -1, 0, txn);
    Counts kb = { 0 };
    b->c = &kb;
    job_txn_unref(txn);
    job_start(&a->common);
    job_start(&b->common);
    LOOP_WAIT_WHILE(a->done < 2 || b->done < 2);
    assert_true(job_user_cancel(&a->common, true, NULL));
    LOOP_WAIT_WHILE(job_next(NULL));
    assert_int_equal(ka.aborted + kb.aborted, 2);
}

/* ---- Drain ---- */

static BlockNode *open_null(void)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver", "raw",
                          "node-name", "top", "file", "driver", "null-co",
                          "size", "1M");
    BlockNode *bs = node_open(NULL, o, NODE_O_RDWR, &err);
    if (!bs) {
        fail_msg("open failed: %s", err->message);
    }
    return bs;
}

static void test_drain_pauses_job(void **state)
{
    GError *err = NULL;
    BlockNode *bs = open_null();
    TestJob *t = new_job("d", -1, 0, NULL);
    Job *job = &t->common;
    t->io_child = job_add_node(job, "main node", bs, BLK_PERM_CONSISTENT_READ,
                               BLK_PERM_ALL, &err);
    assert_non_null(t->io_child);
    g_autofree char *desc = child_parent_desc(t->io_child);
    assert_string_equal(desc, "backup job 'd'");
    job_start(job);
    LOOP_WAIT_WHILE(t->done < 3);

    node_drain_begin(bs);
    /* The drain returned: the job is parked, nothing in flight. */
    assert_false(job->busy);
    assert_true(job->paused);
    assert_int_equal(job->status, JOB_STATUS_PAUSED);
    int done = t->done;
    for (int i = 0; i < 20; i++) {
        loop_iterate(false);
    }
    assert_int_equal(t->done, done);
    /* Nested drains count. */
    node_drain_begin(bs);
    node_drain_end(bs);
    for (int i = 0; i < 20; i++) {
        loop_iterate(false);
    }
    assert_int_equal(t->done, done);
    node_drain_end(bs);
    LOOP_WAIT_WHILE(t->done < done + 3);
    assert_int_equal(job->status, JOB_STATUS_RUNNING);

    /* A user pause survives the end of a drain. */
    assert_true(job_user_pause(job, NULL));
    node_drain_begin(bs);
    node_drain_end(bs);
    wait_idle(job);
    assert_int_equal(job->status, JOB_STATUS_PAUSED);
    assert_true(job_user_resume(job, NULL));

    assert_int_equal(job_cancel_sync(job, true), -ECANCELED);
    node_unref(bs);
}

/* A drain waits for the job's request in flight, then finds it parked. */
static void test_drain_waits_for_inflight(void **state)
{
    BlockNode *bs = open_null();
    TestJob *t = new_job("d", -1, 0, NULL);
    Job *job = &t->common;
    t->slow_io = true;
    assert_non_null(job_add_node(job, "main node", bs,
                                 BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL,
                                 NULL));
    job_start(job);
    /* job_start ran the job up to its first wait: inside the "request". */
    assert_int_equal(t->io_started, 1);
    assert_int_equal(t->io_done, 0);
    node_drain_begin(bs);
    assert_int_equal(t->io_done, t->io_started);
    assert_false(job->busy);
    assert_int_equal(job->status, JOB_STATUS_PAUSED);
    int started = t->io_started;
    for (int i = 0; i < 20; i++) {
        loop_iterate(false);
    }
    assert_int_equal(t->io_started, started);
    node_drain_end(bs);
    LOOP_WAIT_WHILE(t->io_done < started + 2);
    assert_int_equal(job_cancel_sync(job, true), -ECANCELED);
    node_unref(bs);
}

static void test_drain_cancel_while_drained(void **state)
{
    BlockNode *bs = open_null();
    TestJob *t = new_job("d", -1, 0, NULL);
    Job *job = &t->common;
    t->io_child = job_add_node(job, "main node", bs, BLK_PERM_CONSISTENT_READ,
                               BLK_PERM_ALL, NULL);
    job_start(job);
    LOOP_WAIT_WHILE(t->done < 1);
    node_drain_begin(bs);
    /* A cancel ends even a drain's pause: run() sees it and returns. */
    assert_int_equal(job_cancel_sync(job, true), -ECANCELED);
    node_drain_end(bs);
    node_unref(bs);
}

/* The job's edge takes and shares permissions like any parent's. */
static void test_job_edge_permissions(void **state)
{
    GError *err = NULL;
    BlockNode *bs = open_null();
    TestJob *t = new_job("d", 1, 0, NULL);
    assert_non_null(job_add_node(&t->common, "source", bs,
                                 BLK_PERM_CONSISTENT_READ,
                                 BLK_PERM_ALL & ~BLK_PERM_WRITE, &err));
    BlockBackend *blk = blk_new(BLK_PERM_WRITE, BLK_PERM_ALL);
    assert_false(blk_insert_node(blk, bs, &err));
    assert_non_null(strstr(err->message, "unshared by backup job 'd' (uses "
                           "node 'top' as 'source' child)"));
    g_clear_error(&err);
    job_early_fail(&t->common);
    /* The job's edge went with it: now the write is possible. */
    assert_true(blk_insert_node(blk, bs, &err));
    blk_unref(blk);
    node_unref(bs);
}

/* ---- Speed and rate limit ---- */

static void test_ratelimit(void **state)
{
    RateLimit rl = { 0 };
    /* 1 MB/s in 100 ms slices: 100000 bytes per slice. */
    ratelimit_set_speed(&rl, 1000000, 100000000);
    int64_t t0 = 1000000000;
    assert_int_equal(ratelimit_delay_at(&rl, 60000, t0), 0);
    assert_int_equal(ratelimit_delay_at(&rl, 30000, t0), 0);
    /* Over quota: wait until the slice stretched to 140000 bytes ends. */
    assert_int_equal(ratelimit_delay_at(&rl, 50000, t0 + 10),
                     140000000 - 10);
    /* Asking again (n = 0) before then: the rest of the wait. */
    assert_int_equal(ratelimit_delay_at(&rl, 0, t0 + 40000000), 100000000);
    /* A new slice after the stretched end. */
    assert_int_equal(ratelimit_delay_at(&rl, 50000, t0 + 140000001), 0);
    /*
     * Chunks smaller than the quota add up (they were dropped once, and a
     * job reporting 64 KiB chunks at 1 MiB/s never waited).
     */
    RateLimit small = { 0 };
    ratelimit_set_speed(&small, 1 << 20, 100000000);
    int64_t waited = 0;
    for (int i = 0; i < 32; i++) {
        ratelimit_delay_at(&small, 65536, t0 + waited);
        waited += ratelimit_delay_at(&small, 0, t0 + waited);
    }
    /* 2 MiB at 1 MiB/s: close to two seconds of waiting. */
    assert_true(waited >= 1800000000 && waited <= 2100000000);
    /* A request larger than many slices: a long wait after it. */
    RateLimit big = { 0 };
    ratelimit_set_speed(&big, 1000, 100000000);
    assert_true(ratelimit_delay_at(&big, 1 << 20, t0) > 1000000000);
    /* Unlimited. */
    ratelimit_set_speed(&rl, 0, 100000000);
    assert_int_equal(ratelimit_delay_at(&rl, 1ull << 40, t0), 0);
}

static void test_set_speed(void **state)
{
    GError *err = NULL;
    TestJob *t = new_job("s", 1, JOB_MANUAL_DISMISS, NULL);
    Job *job = &t->common;
    assert_false(job_set_speed(job, -1, &err));
    assert_string_equal(err->message,
                        "Parameter 'speed' expects a non-negative value");
    g_clear_error(&err);
    assert_true(job_set_speed(job, 4096, NULL));
    assert_int_equal(job->speed, 4096);
    job_start(job);
    wait_status(job, JOB_STATUS_CONCLUDED);
    assert_false(job_set_speed(job, 1, &err));
    assert_string_equal(err->message, "Job 's' in state 'concluded' cannot "
                        "accept command verb 'set-speed'");
    g_clear_error(&err);
    assert_true(job_dismiss(job, NULL));
}

/* A rate-limited job sleeps; raising the speed to unlimited wakes it. */
typedef struct {
    Job common;
    int chunks;
} RateJob;

static int coroutine_fn rate_run(Job *job, GError **errp)
{
    RateJob *r = (RateJob *)job;
    while (r->chunks < 4 && !job_is_cancelled(job)) {
        job_ratelimit_processed(job, 1 << 20);
        r->chunks++;
        job_ratelimit_sleep(job);
    }
    return 0;
}

static const JobDriver rate_driver = {
    .instance_size = sizeof(RateJob),
    .job_type = JOB_TYPE_MIRROR,
    .run = rate_run,
};

static void test_ratelimit_sleep_woken(void **state)
{
    RateJob *r = job_create("r", &rate_driver, NULL, 0, NULL, NULL, NULL);
    /* 1 byte/s: after the first chunk the job would wait for days. */
    assert_true(job_set_speed(&r->common, 1, NULL));
    job_start(&r->common);
    LOOP_WAIT_WHILE(r->chunks < 1 || r->common.busy);
    assert_non_null(r->common.sleep_timer);
    assert_int_equal(r->chunks, 1);
    /* Slower still: no wake-up. */
    assert_true(job_set_speed(&r->common, 1, NULL));
    assert_non_null(r->common.sleep_timer);
    assert_true(job_set_speed(&r->common, 0, NULL));
    LOOP_WAIT_WHILE(job_find("r"));
}

/* ---- Listener removal ---- */

static int counted;

static void count_cb(Job *job, JobEvent e, JobStatus old, void *opaque)
{
    counted++;
}

static void test_listener_removed(void **state)
{
    unsigned h = job_add_listener(count_cb, NULL);
    TestJob *t = new_job("l", 1, 0, NULL);
    int after_create = counted;
    assert_true(after_create > 0);
    job_remove_listener(h);
    job_start(&t->common);
    LOOP_WAIT_WHILE(job_find("l"));
    assert_int_equal(counted, after_create);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tables, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auto_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manual_finalize_dismiss, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failure_recorded, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failure_without_message, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_user_pause_resume, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pause_before_start, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pause_enters_at_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_internal_pause_counting, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_at_pause_point, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_in_sleep, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_created, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_pending_and_concluded,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_sync_from_coroutine,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_sync_all, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ready_complete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_complete_unsupported, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_txn_success, setup, teardown),
        cmocka_unit_test_setup_teardown(test_txn_one_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_txn_prepare_fails, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_txn_cancel_one, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_pauses_job, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_drain_waits_for_inflight, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_drain_cancel_while_drained,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_job_edge_permissions, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ratelimit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_speed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ratelimit_sleep_woken, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_listener_removed, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
