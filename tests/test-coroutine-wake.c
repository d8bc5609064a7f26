/*
 * Wait points against stray wake-ups.  A coroutine may be entered by
 * someone other than the event it waits for: a co_wake() left over from
 * an earlier wait, a job's pause or resume, a timer that fires late.  Each
 * wait point must then go on waiting, not return early while its waiter
 * record (a queue node, a timer, a BH's argument) is still in use on its
 * stack:
 *
 *   co_queue_wait      (and so CoMutex, CoRwLock and every CoQueue user)
 *   co_sleep_ns
 *   node_drain_begin   from a coroutine
 *   job_cancel_sync    from a coroutine (finish_sync: also job_complete_sync)
 *
 * Each test wakes the waiting coroutine once more than the wait expects,
 * lets that wake run, and checks that the wait has not ended and that it
 * ends when its own event comes.  Without the fix each of them returned at
 * the stray wake.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <cmocka.h>
#include "strata/backend.h"
#include "strata/block.h"
#include "strata/coroutine.h"
#include "strata/iov.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "support.h"

/* Run what is ready now, a few rounds (BHs queued by BHs included). */
/* ---- co_queue_wait ---- */

typedef struct {
    CoQueue q;
    bool returned;
} QueueWait;

static void queue_waiter(void *opaque)
{
    QueueWait *w = opaque;
    co_queue_wait(&w->q);
    w->returned = true;
}

static void test_queue_stray(void **state)
{
    QueueWait w = { .returned = false };
    co_queue_init(&w.q);
    Coroutine *co = co_create(queue_waiter, &w);
    co_enter(co);
    co_wake(co);                        /* not from the queue */
    run_ready();
    assert_false(w.returned);
    assert_false(co_queue_empty(&w.q)); /* still queued: a live node */
    assert_true(co_queue_next(&w.q));
    assert_true(wait_flag(&w.returned, 2000));
    assert_true(co_queue_empty(&w.q));
}

/*
 * The damage a stray wake did through a CoMutex: the woken waiter queued
 * a second node over its first, still linked one, and the waiter behind
 * it was lost (never got the lock).
 */
typedef struct {
    CoMutex m;
    bool release;       /* the first holder unlocks once set */
    int holders;        /* at once: must stay <= 1 */
    int max_holders;
    int done;
} MutexRun;

static void mutex_co(void *opaque)
{
    MutexRun *r = opaque;
    co_mutex_lock(&r->m);
    r->holders++;
    r->max_holders = MAX(r->max_holders, r->holders);
    while (!r->release) {
        co_sleep_ns(200000);
    }
    r->holders--;
    co_mutex_unlock(&r->m);
    r->done++;
}

static void test_mutex_stray(void **state)
{
    MutexRun r = { .release = false };
    co_mutex_init(&r.m);
    Coroutine *a = co_create(mutex_co, &r);
    Coroutine *b = co_create(mutex_co, &r);
    Coroutine *c = co_create(mutex_co, &r);
    co_enter(a);                        /* holds the lock, sleeps */
    co_enter(b);                        /* queued */
    co_enter(c);                        /* queued behind b */
    co_wake(b);                         /* stray */
    run_ready();
    r.release = true;
    int64_t end = clock_ns() + 2000 * 1000000LL;
    while (r.done < 3 && clock_ns() < end) {
        loop_iterate(false);
        g_usleep(200);
    }
    assert_int_equal(r.done, 3);
    assert_int_equal(r.max_holders, 1);
    assert_false(r.m.locked);
}

/* ---- co_sleep_ns ---- */

typedef struct {
    int64_t slept_ns;
    bool returned;
} SleepRun;

static void sleeper(void *opaque)
{
    SleepRun *s = opaque;
    int64_t start = clock_ns();
    co_sleep_ns(50 * 1000000LL);
    s->slept_ns = clock_ns() - start;
    s->returned = true;
}

static void test_sleep_stray(void **state)
{
    SleepRun s = { 0 };
    Coroutine *co = co_create(sleeper, &s);
    co_enter(co);
    co_wake(co);
    run_ready();
    assert_false(s.returned);
    assert_true(wait_flag(&s.returned, 2000));
    assert_true(s.slept_ns >= 50 * 1000000LL);
    /* Nothing of the sleep is left to fire into a finished coroutine. */
    int64_t end = clock_ns() + 100 * 1000000LL;
    while (clock_ns() < end) {
        loop_iterate(false);
        g_usleep(1000);
    }
}

/* ---- node_drain_begin from a coroutine ---- */

typedef struct {
    BlockBackend *blk;
    bool read_done;
    int read_ret;
} Reader;

static void reader_co(void *opaque)
{
    Reader *r = opaque;
    char buf[512];
    IOVec v;
    iovec_init_buf(&v, buf, sizeof(buf));
    r->read_ret = blk_co_preadv(r->blk, 0, sizeof(buf), &v, 0);
    iovec_destroy(&v);
    r->read_done = true;
}

typedef struct {
    BlockNode *bs;
    Reader *reader;
    bool saw_read_done;     /* when node_drain_begin returned */
    bool returned;
} Drainer;

static void drainer_co(void *opaque)
{
    Drainer *d = opaque;
    node_drain_begin(d->bs);
    d->saw_read_done = d->reader->read_done;
    node_drain_end(d->bs);
    d->returned = true;
}

static void test_drain_stray(void **state)
{
    /* Every request of this node waits 50 ms in the loop. */
    BlockNode *bs = open_null(1 << 20, 50 * 1000000LL);
    BlockBackend *blk = backend_on(bs, BLK_PERM_CONSISTENT_READ);
    Reader rd = { .blk = blk };
    Drainer d = { .bs = bs, .reader = &rd };
    co_enter(co_create(reader_co, &rd));
    assert_false(rd.read_done);
    Coroutine *co = co_create(drainer_co, &d);
    co_enter(co);
    co_wake(co);
    assert_true(wait_flag(&d.returned, 2000));
    assert_true(d.saw_read_done);
    assert_int_equal(rd.read_ret, 0);
    run_ready();
    blk_unref(blk);
    node_unref(bs);
}

/* ---- job_cancel_sync from a coroutine ---- */

/* Runs until cancelled, then takes 50 ms to wind down. */
static int coroutine_fn slow_cancel_run(Job *job, GError **errp)
{
    while (!job_is_cancelled(job)) {
        job_sleep_ns(job, 1000000);
    }
    co_sleep_ns(50 * 1000000LL);
    return -ECANCELED;
}

static const JobDriver slow_cancel_driver = {
    .instance_size = sizeof(Job),
    .job_type = JOB_TYPE_COMMIT,
    .run = slow_cancel_run,
};

typedef struct {
    Job *job;
    bool saw_completed;     /* when job_cancel_sync returned */
    bool returned;
} Canceller;

static void canceller_co(void *opaque)
{
    Canceller *c = opaque;
    job_cancel_sync(c->job, true);
    c->saw_completed = job_is_completed(c->job);
    c->returned = true;
}

static void test_cancel_sync_stray(void **state)
{
    GError *err = NULL;
    Job *job = job_create("slow", &slow_cancel_driver, NULL,
                          JOB_MANUAL_DISMISS, NULL, NULL, &err);
    assert_non_null(job);
    job_start(job);
    run_ready();
    job_ref(job);
    Canceller c = { .job = job };
    Coroutine *co = co_create(canceller_co, &c);
    co_enter(co);
    co_wake(co);
    /* (the BH that waits runs the loop until the job has completed) */
    assert_true(wait_flag(&c.returned, 2000));
    assert_true(c.saw_completed);
    assert_true(job_dismiss(job, &err));
    job_unref(job);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queue_stray),
        cmocka_unit_test(test_mutex_stray),
        cmocka_unit_test(test_sleep_stray),
        cmocka_unit_test(test_drain_stray),
        cmocka_unit_test(test_cancel_sync_stray),
    };
    /* One case alone (each crashed or failed on its own before the fix). */
    if (g_getenv("TEST_FILTER")) {
        cmocka_set_test_filter(g_getenv("TEST_FILTER"));
    }
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
