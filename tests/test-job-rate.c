/*
 * The progress rate and ETA of query-jobs' x-strata-rate/x-strata-eta
 * (jobs/job-rate.c): the sliding window on explicit times (no clock in
 * these tests), and which jobs have a rate at all.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <cmocka.h>
#include "strata/job-rate.h"
#include "strata/loop.h"

#define S 1000000000LL
#define MS 1000000LL
#define MB 1000000ULL

static int64_t rate_at(const JobRateWindow *w, int64_t now, uint64_t done)
{
    int64_t r = -1;
    assert_true(job_rate_window_rate(w, now, done, &r));
    return r;
}

static void test_unknown_until_half_a_second(void **state)
{
    JobRateWindow w = { 0 };
    int64_t r;
    assert_false(job_rate_window_rate(&w, 10 * S, 0, &r));
    job_rate_window_add(&w, 10 * S, 0);
    assert_false(job_rate_window_rate(&w, 10 * S + 499 * MS, 4096, &r));
    assert_int_equal(rate_at(&w, 10 * S + 500 * MS, 4096), 8192);
    assert_int_equal(rate_at(&w, 11 * S, 1000), 1000);
}

/* A sample every 100 ms from `from` to `to`, per_step more each time. */
static void feed(JobRateWindow *w, int64_t from, int64_t to, uint64_t *done,
                 uint64_t per_step)
{
    for (int64_t t = from; t <= to; t += 100 * MS) {
        *done += per_step;
        job_rate_window_add(w, t, *done);
    }
}

/* Starts at 0 with nothing done, then 1 MB/s for 10 s. */
static void ten_seconds(JobRateWindow *w, uint64_t *done)
{
    *done = 0;
    job_rate_window_add(w, 0, 0);
    feed(w, 100 * MS, 10 * S, done, MB / 10);
}

static void test_steady_and_changing(void **state)
{
    JobRateWindow w = { 0 };
    uint64_t done;
    ten_seconds(&w, &done);
    assert_int_equal(done, 10 * MB);
    assert_int_equal(rate_at(&w, 10 * S, done), MB);
    /* Twice as fast from then on: after a whole window, only that counts. */
    feed(&w, 10 * S + 100 * MS, 15 * S, &done, MB / 5);
    assert_int_equal(rate_at(&w, 15 * S, done), 2 * MB);
    /* Half-way, a mix: 2.5 s at 1 MB/s and 2.5 s at 2 MB/s. */
    JobRateWindow v = { 0 };
    ten_seconds(&v, &done);
    feed(&v, 10 * S + 100 * MS, 12 * S + 500 * MS, &done, MB / 5);
    assert_int_equal(rate_at(&v, 12 * S + 500 * MS, done), 1500000);
}

/* No progress (a paused job): the rate falls to 0 within a window. */
static void test_stalled(void **state)
{
    JobRateWindow w = { 0 };
    uint64_t done;
    ten_seconds(&w, &done);
    assert_int_equal(rate_at(&w, 12 * S, done), 600000);
    assert_int_equal(rate_at(&w, 15 * S, done), 0);
    assert_int_equal(rate_at(&w, 100 * S, done), 0);
}

/* Samples closer than the spacing are dropped; the ring keeps the newest. */
static void test_spacing_and_ring(void **state)
{
    JobRateWindow w = { 0 };
    job_rate_window_add(&w, 0, 0);
    job_rate_window_add(&w, 50 * MS, 100);
    job_rate_window_add(&w, 99 * MS, 200);
    assert_int_equal(w.count, 1);
    job_rate_window_add(&w, 100 * MS, 300);
    assert_int_equal(w.count, 2);

    job_rate_window_reset(&w);
    assert_int_equal(w.count, 0);
    uint64_t done = 0;
    job_rate_window_add(&w, 0, 0);
    feed(&w, 100 * MS, 60 * S, &done, 1000);
    assert_int_equal(w.count, JOB_RATE_SAMPLES);
    /* The oldest kept is 6.3 s old: enough for a window. */
    assert_int_equal(w.s[w.first].t_ns, 60 * S - (JOB_RATE_SAMPLES - 1) *
                     100 * MS);
    assert_int_equal(rate_at(&w, 60 * S, done), 10000);
}

static void test_eta(void **state)
{
    int64_t eta = -1;
    assert_true(job_rate_eta(0, 10, 10, &eta));
    assert_int_equal(eta, 0);
    assert_true(job_rate_eta(5, 12, 10, &eta));
    assert_int_equal(eta, 0);
    assert_false(job_rate_eta(0, 0, 10, &eta));
    assert_true(job_rate_eta(3, 0, 10, &eta));
    assert_int_equal(eta, 4);
    assert_true(job_rate_eta(MB, 0, 4096 * MB, &eta));
    assert_int_equal(eta, 4096);
}

/* ---- Which jobs have a rate ---- */

static int coroutine_fn wait_run(Job *job, GError **errp)
{
    job_progress_set_remaining(job, 100);
    while (!job_is_cancelled(job)) {
        job_yield(job);
    }
    return -ECANCELED;
}

static const JobDriver wait_driver = {
    .instance_size = sizeof(Job),
    .job_type = JOB_TYPE_CREATE,
    .run = wait_run,
};

static void test_tracked_jobs(void **state)
{
    bool has_rate = true, has_eta = true;
    int64_t rate, eta;
    job_rate_init();
    job_rate_init();
    Job *job = job_create("r", &wait_driver, NULL, JOB_MANUAL_DISMISS, NULL,
                          NULL, NULL);
    /* Not started: nothing to say. */
    job_rate_get(job, &has_rate, &rate, &has_eta, &eta);
    assert_false(has_rate);
    assert_false(has_eta);
    job_start(job);
    job_cancel_sync(job, true);
    assert_int_equal(job->status, JOB_STATUS_CONCLUDED);
    /* Over: nothing either. */
    has_rate = has_eta = true;
    job_rate_get(job, &has_rate, &rate, &has_eta, &eta);
    assert_false(has_rate);
    assert_false(has_eta);
    assert_true(job_dismiss(job, NULL));
}

static int coroutine_fn steady_run(Job *job, GError **errp)
{
    job_progress_set_remaining(job, 1000 * 1000);
    while (!job_is_cancelled(job)) {
        job_progress_update(job, 1000);
        job_sleep_ns(job, 10 * MS);
    }
    return -ECANCELED;
}

static const JobDriver steady_driver = {
    .instance_size = sizeof(Job),
    .job_type = JOB_TYPE_CREATE,
    .run = steady_run,
};

/* A job that progresses gets a rate and an ETA once old enough. */
static void test_running_job(void **state)
{
    bool has_rate = false, has_eta = false;
    int64_t rate = 0, eta = -1;
    job_rate_init();
    Job *job = job_create("s", &steady_driver, NULL, 0, NULL, NULL, NULL);
    job_start(job);
    LOOP_WAIT_WHILE((job_rate_get(job, &has_rate, &rate, &has_eta, &eta),
                     !has_rate));
    assert_true(rate > 0);
    assert_true(has_eta);
    assert_true(eta > 0);
    job_cancel_sync(job, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_until_half_a_second),
        cmocka_unit_test(test_steady_and_changing),
        cmocka_unit_test(test_stalled),
        cmocka_unit_test(test_spacing_and_ring),
        cmocka_unit_test(test_eta),
        cmocka_unit_test(test_tracked_jobs),
        cmocka_unit_test(test_running_job),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
