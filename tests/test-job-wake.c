/*
 * A job's own waits against stray wake-ups (see test-coroutine-wake.c):
 *
 *   do_yield           job_yield(), job_sleep_ns() and a pause point
 *                      (jobs/job.c): only job_enter() and the sleep's
 *                      timer end it; QEMU asserts job->busy after its
 *                      yield, which a stray wake-up failed here
 *   snapshot jobs      the last yield of run(), which lets the command's
 *                      reply out before the job concludes
 *                      (qapi/cmd-snapshot-job.c): its BH holds the
 *                      coroutine, which must still be there when it runs
 *
 * A stray wake-up is an entry by anyone else: a co_wake() left over from
 * an earlier wait, a completion that fires late.  Each test delivers one
 * while the job waits and checks that the wait goes on and ends at its
 * own event; pause, cancel and complete keep ending it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <string.h>
#include <cmocka.h>
#include "strata/coroutine.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "qapi-commands.h"
#include "support.h"

static bool wait_job_completed(Job *job, int ms)
{
    int64_t end = clock_ns() + (int64_t)ms * 1000000;
    while (!job_is_completed(job) && clock_ns() < end) {
        loop_iterate(false);
        g_usleep(500);
    }
    return job_is_completed(job);
}

/* ---- do_yield ---- */

typedef struct {
    Job common;
    bool go;            /* job_yield() until set */
    int64_t sleep_ns;   /* > 0: one job_sleep_ns() instead */
    int64_t slept_ns;
    int wakeups;        /* times job_yield() came back */
} WaitJob;

static int coroutine_fn wait_run(Job *job, GError **errp)
{
    WaitJob *s = (WaitJob *)job;
    if (s->sleep_ns > 0) {
        int64_t start = clock_ns();
        job_sleep_ns(job, s->sleep_ns);
        s->slept_ns = clock_ns() - start;
        return 0;
    }
    while (!s->go && !job_is_cancelled(job)) {
        job_yield(job);
        s->wakeups++;
    }
    return job_is_cancelled(job) ? -ECANCELED : 0;
}

static const JobDriver wait_driver = {
    .instance_size = sizeof(WaitJob),
    .job_type = JOB_TYPE_COMMIT,
    .run = wait_run,
};

static WaitJob *start_wait_job(int64_t sleep_ns)
{
    GError *err = NULL;
    WaitJob *s = job_create("wait", &wait_driver, NULL, JOB_MANUAL_DISMISS,
                            NULL, NULL, &err);
    assert_non_null(s);
    s->sleep_ns = sleep_ns;
    job_start(&s->common);
    run_ready();
    job_ref(&s->common);
    return s;
}

/* It ends with ret, having slept at least min_slept_ns; then it goes. */
static void end_wait_job(WaitJob *s, int ret, int64_t min_slept_ns)
{
    GError *err = NULL;
    assert_true(wait_job_completed(&s->common, 2000));
    run_ready();
    assert_int_equal(s->common.ret, ret);
    assert_true(s->slept_ns >= min_slept_ns);
    assert_true(job_dismiss(&s->common, &err));
    job_unref(&s->common);
}

static void test_yield_stray(void **state)
{
    WaitJob *s = start_wait_job(0);
    assert_false(s->common.busy);
    co_wake(s->common.co);
    run_ready();
    assert_false(s->common.busy);
    assert_int_equal(s->wakeups, 0);
    /* Its own wake-up still ends the wait. */
    job_enter(&s->common);
    run_ready();
    assert_int_equal(s->wakeups, 1);
    s->go = true;
    job_enter(&s->common);
    end_wait_job(s, 0, 0);
}

static void test_sleep_stray(void **state)
{
    WaitJob *s = start_wait_job(50 * 1000000LL);
    co_wake(s->common.co);
    run_ready();
    assert_false(job_is_completed(&s->common));
    assert_int_equal(s->slept_ns, 0);
    end_wait_job(s, 0, 50 * 1000000LL);
}

static void test_pause_stray(void **state)
{
    GError *err = NULL;
    WaitJob *s = start_wait_job(0);
    assert_true(job_user_pause(&s->common, &err));
    run_ready();
    assert_int_equal(s->common.status, JOB_STATUS_PAUSED);
    co_wake(s->common.co);
    run_ready();
    assert_int_equal(s->common.status, JOB_STATUS_PAUSED);
    assert_true(s->common.paused);
    assert_true(job_user_resume(&s->common, &err));
    run_ready();
    assert_int_equal(s->common.status, JOB_STATUS_RUNNING);
    co_wake(s->common.co);
    run_ready();
    /* Cancel enters it as before. */
    job_cancel(&s->common, true);
    end_wait_job(s, -ECANCELED, 0);
}

/* ---- a snapshot job's last yield ---- */

typedef struct {
    int progress;       /* progress events of the job */
    int concluded;      /* transitions to concluded */
} SnapSeen;

/*
 * Queues a wake-up as the job starts: it comes ahead of the job's own,
 * queued when run() reaches its last yield.
 */
static void snap_listener(Job *job, JobEvent ev, JobStatus old, void *opaque)
{
    SnapSeen *seen = opaque;
    if (ev == JOB_EVENT_STATUS_CHANGE && job->status == JOB_STATUS_RUNNING &&
        old == JOB_STATUS_CREATED) {
        co_wake(job->co);
    } else if (ev == JOB_EVENT_STATUS_CHANGE &&
               job->status == JOB_STATUS_CONCLUDED) {
        seen->concluded++;
    } else if (ev == JOB_EVENT_PROGRESS) {
        seen->progress++;
    }
}

static void test_snapshot_stray(void **state)
{
    GError *err = NULL;
    SnapSeen seen = { 0 };
    unsigned h = job_add_listener(snap_listener, &seen);
    /* No devices: run() fails at once and goes to its last yield. */
    qmp_snapshot_delete("snap", "tag", NULL, &err);
    assert_null(err);
    Job *job = job_find("snap");
    assert_non_null(job);
    job_ref(job);
    assert_true(wait_job_completed(job, 2000));
    run_ready();
    assert_int_equal(job->status, JOB_STATUS_CONCLUDED);
    assert_int_equal(seen.concluded, 1);
    /* run() ran once: its two progress events (remaining, then done). */
    assert_int_equal(seen.progress, 2);
    assert_non_null(job->err);
    assert_string_equal(job->err->message,
                        "At least one device is required for snapshot");
    job_remove_listener(h);
    assert_true(job_dismiss(job, &err));
    job_unref(job);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_yield_stray),
        cmocka_unit_test(test_sleep_stray),
        cmocka_unit_test(test_pause_stray),
        cmocka_unit_test(test_snapshot_stray),
    };
    /* One case alone (each aborts the program before the fix). */
    if (g_getenv("TEST_FILTER")) {
        cmocka_set_test_filter(g_getenv("TEST_FILTER"));
    }
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
