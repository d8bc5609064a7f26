/*
 * The lifetime of a request record that lives on a waiting coroutine's
 * stack while another thread completes it: thread_pool_co_run()'s PoolReq
 * (a worker fills it and posts the completion to the submitter's loop) and
 * co_call_in()'s CoHop (the target thread posts the return).
 *
 * The record must stay until its completion has landed, whatever else
 * enters the coroutine meanwhile: a stray entry (a co_wake() left over
 * from an earlier wait) that let the coroutine return early would leave
 * the worker writing into a stack frame the coroutine has reused.  Run
 * under ASan with ASAN_OPTIONS=detect_stack_use_after_return=1 the stress
 * cases also catch a completion that touches the record after it is gone.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <glib.h>
#include "strata/coroutine.h"
#include "strata/iothread.h"
#include "strata/loop.h"

/* ---- A stray wake while the worker still holds the request ---- */

typedef struct {
    int in;
    gint release;       /* the worker returns once this is set */
    gint worker_started;
} SlowArg;

static int slow_fn(void *opaque)
{
    SlowArg *a = opaque;
    g_atomic_int_set(&a->worker_started, 1);
    while (!g_atomic_int_get(&a->release)) {
        g_usleep(1000);
    }
    return a->in * 2;
}

typedef struct {
    SlowArg arg;
    int ret;
    bool finished;
} StrayRun;

static void stray_co(void *opaque)
{
    StrayRun *s = opaque;
    /* A wake that belongs to no wait of ours: it lands while we wait
     * for the worker. */
    co_wake(co_self());
    s->ret = thread_pool_co_run(slow_fn, &s->arg);
    s->finished = true;
}

static void test_stray_wake_pool(void **state)
{
    StrayRun s = { .arg = { .in = 21 }, .ret = -1 };
    co_enter(co_create(stray_co, &s));
    /* Let the stray wake run while the worker is busy with the request. */
    while (!g_atomic_int_get(&s.arg.worker_started)) {
        loop_iterate(false);
        g_usleep(1000);
    }
    for (int i = 0; i < 20; i++) {
        loop_iterate(false);
    }
    assert_false(s.finished);
    g_atomic_int_set(&s.arg.release, 1);
    LOOP_WAIT_WHILE(!s.finished);
    assert_int_equal(s.ret, 42);
}

/* ---- The same for co_call_in's hop to another thread and back ---- */

typedef struct {
    gint release;
    gint started;
    int value;
} HopArg;

static void hop_fn(void *opaque)
{
    HopArg *h = opaque;
    g_atomic_int_set(&h->started, 1);
    while (!g_atomic_int_get(&h->release)) {
        g_usleep(1000);
    }
    h->value = 7;
}

typedef struct {
    StrataLoop *target;
    HopArg arg;
    bool finished;
    int seen;
} HopRun;

static void hop_caller_co(void *opaque)
{
    HopRun *r = opaque;
    co_wake(co_self());
    co_call_in(r->target, hop_fn, &r->arg);
    r->seen = r->arg.value;
    r->finished = true;
}

static void test_stray_wake_hop(void **state)
{
    IOThreadParams p;
    GError *err = NULL;
    iothread_params_default(&p);
    IOThread *t = iothread_new("hop", &p, &err);
    assert_non_null(t);
    HopRun r = { .target = iothread_loop(t) };
    co_enter(co_create(hop_caller_co, &r));
    while (!g_atomic_int_get(&r.arg.started)) {
        loop_iterate(false);
        g_usleep(1000);
    }
    for (int i = 0; i < 20; i++) {
        loop_iterate(false);
    }
    assert_false(r.finished);
    g_atomic_int_set(&r.arg.release, 1);
    LOOP_WAIT_WHILE(!r.finished);
    assert_int_equal(r.seen, 7);
    iothread_free(t);
}

/* ---- An iothread stopped while one of its coroutines waits in the pool ---- */

typedef struct {
    SlowArg arg;
    int ret;
    gint finished;
} ExitRun;

static void exit_co(void *opaque)
{
    ExitRun *r = opaque;
    r->ret = thread_pool_co_run(slow_fn, &r->arg);
    g_atomic_int_set(&r->finished, 1);
}

/* In the iothread: its coroutine submits and waits there. */
static void start_exit_co(void *opaque)
{
    co_enter(co_create(exit_co, opaque));
}

static gpointer release_later(gpointer opaque)
{
    SlowArg *a = opaque;
    g_usleep(100 * 1000);
    g_atomic_int_set(&a->release, 1);
    return NULL;
}

/*
 * The worker posts its completion to the iothread's loop: stopping the
 * thread must wait for it rather than free that loop under the worker
 * (and leave the coroutine parked for ever).
 */
static void test_iothread_exit_waits_for_pool(void **state)
{
    IOThreadParams p;
    GError *err = NULL;
    iothread_params_default(&p);
    IOThread *t = iothread_new("exit", &p, &err);
    assert_non_null(t);
    ExitRun r = { .arg = { .in = 4 }, .ret = -1 };
    iothread_run_sync(t, start_exit_co, &r);
    while (!g_atomic_int_get(&r.arg.worker_started)) {
        g_usleep(1000);
    }
    GThread *rel = g_thread_new("release", release_later, &r.arg);
    iothread_free(t);
    assert_true(g_atomic_int_get(&r.finished));
    assert_int_equal(r.ret, 8);
    g_thread_join(rel);
}

/* ---- Stress: many submitters in several threads at once ---- */

#define STRESS_THREADS 3
#define STRESS_COS 16
#define STRESS_ROUNDS 200

typedef struct {
    guint64 in;
    guint64 out;
} Work;

static int work_fn(void *opaque)
{
    Work *w = opaque;
    /* Sometimes finish at once, sometimes after the submitter yielded. */
    if (w->in % 7 == 0) {
        g_usleep(50);
    }
    w->out = w->in * 3 + 1;
    return (int)(w->in & 0x7fff);
}

static void nop_bh(void *opaque)
{
}

typedef struct {
    guint seed;
    gint *done;         /* submitters finished, all threads */
    gint *errors;
} StressCo;

static void stress_co(void *opaque)
{
    StressCo *s = opaque;
    for (int i = 0; i < STRESS_ROUNDS; i++) {
        /* The record is on this stack, as the real callers' are. */
        Work w = { .in = (guint64)s->seed * 100003u + (guint64)i, .out = 0 };
        int ret = thread_pool_co_run(work_fn, &w);
        if (ret != (int)(w.in & 0x7fff) || w.out != w.in * 3 + 1) {
            g_atomic_int_inc(s->errors);
        }
    }
    g_atomic_int_inc(s->done);
    /* The main thread waits in its loop: wake it to look at the count. */
    loop_bh_remote(loop_main(), nop_bh, NULL);
    g_free(s);
}

typedef struct {
    gint *done;
    gint *errors;
    guint base;
} StartArgs;

/* Runs in an iothread: start its submitters there. */
static void start_submitters(void *opaque)
{
    StartArgs *a = opaque;
    for (int i = 0; i < STRESS_COS; i++) {
        StressCo *s = g_new(StressCo, 1);
        *s = (StressCo){ a->base + (guint)i, a->done, a->errors };
        co_enter(co_create(stress_co, s));
    }
}

static void test_stress_threads(void **state)
{
    gint done = 0, errors = 0;
    IOThread *t[STRESS_THREADS];
    StartArgs args[STRESS_THREADS];
    IOThreadParams p;
    iothread_params_default(&p);
    for (int i = 0; i < STRESS_THREADS; i++) {
        GError *err = NULL;
        t[i] = iothread_new("stress", &p, &err);
        assert_non_null(t[i]);
        args[i] = (StartArgs){ &done, &errors, 1000u * (guint)(i + 1) };
        iothread_run_sync(t[i], start_submitters, &args[i]);
    }
    /* The main thread's loop submits as well. */
    StartArgs mine = { &done, &errors, 0 };
    start_submitters(&mine);
    LOOP_WAIT_WHILE(g_atomic_int_get(&done) < (STRESS_THREADS + 1) *
                                                STRESS_COS);
    assert_int_equal(g_atomic_int_get(&errors), 0);
    for (int i = 0; i < STRESS_THREADS; i++) {
        iothread_free(t[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stray_wake_pool),
        cmocka_unit_test(test_stray_wake_hop),
        cmocka_unit_test(test_stress_threads),
        cmocka_unit_test(test_iothread_exit_waits_for_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
