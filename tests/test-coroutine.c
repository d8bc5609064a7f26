/* Coroutines and their locks: switching, pooling, CoMutex, CoQueue,
 * CoRwLock and co_sleep_ns. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "strata/coroutine.h"
#include "strata/loop.h"

static void yield_twice(void *opaque)
{
    int *n = opaque;
    (*n)++;
    co_yield();
    (*n)++;
    co_yield();
    (*n)++;
}

static void test_enter_yield(void **state)
{
    int n = 0;
    Coroutine *co = co_create(yield_twice, &n);
    assert_false(in_coroutine());
    co_enter(co);
    assert_int_equal(n, 1);
    co_enter(co);
    assert_int_equal(n, 2);
    co_enter(co); /* terminates and goes back to the pool */
    assert_int_equal(n, 3);
}

static void nested_inner(void *opaque)
{
    int *depth = opaque;
    (*depth)++;
}

static void nested_outer(void *opaque)
{
    int *depth = opaque;
    Coroutine *self = co_self();
    co_enter(co_create(nested_inner, depth));
    assert_ptr_equal(co_self(), self);
    (*depth)++;
}

static void test_nested(void **state)
{
    int depth = 0;
    co_enter(co_create(nested_outer, &depth));
    assert_int_equal(depth, 2);
}

static void test_many(void **state)
{
    /* More than the pool holds, twice: creation and reuse both work. */
    for (int round = 0; round < 2; round++) {
        int n[300] = { 0 };
        Coroutine *cos[300];
        for (int i = 0; i < 300; i++) {
            cos[i] = co_create(yield_twice, &n[i]);
            co_enter(cos[i]);
        }
        for (int k = 0; k < 2; k++) {
            for (int i = 0; i < 300; i++) {
                co_enter(cos[i]);
            }
        }
        for (int i = 0; i < 300; i++) {
            assert_int_equal(n[i], 3);
        }
    }
}

typedef struct {
    CoMutex mutex;
    int inside;
    int max_inside;
    int done;
    int order[8];
    int norder;
} MutexTest;

typedef struct {
    MutexTest *t;
    int id;
} MutexArg;

static void mutex_worker(void *opaque)
{
    MutexArg *a = opaque;
    MutexTest *t = a->t;
    co_mutex_lock(&t->mutex);
    t->order[t->norder++] = a->id;
    t->inside++;
    t->max_inside = MAX(t->max_inside, t->inside);
    co_sleep_ns(1000000); /* hold the lock across a real wait */
    t->inside--;
    co_mutex_unlock(&t->mutex);
    t->done++;
}

static void test_mutex(void **state)
{
    MutexTest t = { 0 };
    MutexArg args[8];
    co_mutex_init(&t.mutex);
    for (int i = 0; i < 8; i++) {
        args[i] = (MutexArg){ &t, i };
        co_enter(co_create(mutex_worker, &args[i]));
    }
    LOOP_WAIT_WHILE(t.done < 8);
    assert_int_equal(t.max_inside, 1);
    /* FIFO hand-over: the lock is granted in arrival order. */
    for (int i = 0; i < 8; i++) {
        assert_int_equal(t.order[i], i);
    }
}

typedef struct {
    CoQueue q;
    int woken;
} QueueTest;

static void queue_waiter(void *opaque)
{
    QueueTest *t = opaque;
    co_queue_wait(&t->q);
    t->woken++;
}

static void test_queue(void **state)
{
    QueueTest t = { 0 };
    co_queue_init(&t.q);
    for (int i = 0; i < 5; i++) {
        co_enter(co_create(queue_waiter, &t));
    }
    assert_false(co_queue_empty(&t.q));
    assert_true(co_queue_next(&t.q));
    LOOP_WAIT_WHILE(t.woken < 1);
    loop_iterate(false);
    assert_int_equal(t.woken, 1);
    co_queue_restart_all(&t.q);
    LOOP_WAIT_WHILE(t.woken < 5);
    assert_true(co_queue_empty(&t.q));
    assert_false(co_queue_next(&t.q));
}

typedef struct {
    CoRwLock lock;
    int readers, writers, max_readers;
    bool overlap_error;
    int done;
} RwTest;

static void rw_reader(void *opaque)
{
    RwTest *t = opaque;
    co_rwlock_rdlock(&t->lock);
    if (t->writers) {
        t->overlap_error = true;
    }
    t->readers++;
    t->max_readers = MAX(t->max_readers, t->readers);
    co_sleep_ns(500000);
    t->readers--;
    co_rwlock_unlock(&t->lock);
    t->done++;
}

static void rw_writer(void *opaque)
{
    RwTest *t = opaque;
    co_rwlock_wrlock(&t->lock);
    if (t->readers || t->writers) {
        t->overlap_error = true;
    }
    t->writers++;
    co_sleep_ns(500000);
    t->writers--;
    co_rwlock_unlock(&t->lock);
    t->done++;
}

static void test_rwlock(void **state)
{
    RwTest t = { 0 };
    co_rwlock_init(&t.lock);
    co_enter(co_create(rw_reader, &t));
    co_enter(co_create(rw_reader, &t));
    co_enter(co_create(rw_writer, &t));
    co_enter(co_create(rw_reader, &t)); /* queues behind the writer */
    co_enter(co_create(rw_writer, &t));
    LOOP_WAIT_WHILE(t.done < 5);
    assert_false(t.overlap_error);
    assert_int_equal(t.max_readers, 2);
}

static void bh_count(void *opaque)
{
    (*(int *)opaque)++;
}

typedef struct {
    int outer_runs, inner_runs, sibling_runs;
} NestedBh;

static void bh_waits(void *opaque)
{
    NestedBh *n = opaque;
    n->outer_runs++;
    /* A wait from inside a BH: must run the new BH exactly once and
     * must not run this BH (or its already-run siblings) again. */
    loop_bh(bh_count, &n->inner_runs);
    LOOP_WAIT_WHILE(n->inner_runs == 0);
}

static void test_nested_bh_wait(void **state)
{
    NestedBh n = { 0 };
    loop_bh(bh_count, &n.sibling_runs);
    loop_bh(bh_waits, &n);
    loop_bh(bh_count, &n.sibling_runs);
    LOOP_WAIT_WHILE(n.sibling_runs < 2 || n.inner_runs < 1);
    for (int i = 0; i < 5; i++) {
        loop_iterate(false);
    }
    assert_int_equal(n.outer_runs, 1);
    assert_int_equal(n.inner_runs, 1);
    assert_int_equal(n.sibling_runs, 2);
}

static void sleeper(void *opaque)
{
    int64_t *elapsed = opaque;
    int64_t start = clock_ns();
    co_sleep_ns(20 * 1000000LL);
    *elapsed = clock_ns() - start;
}

static void test_sleep(void **state)
{
    int64_t elapsed = -1;
    co_run_sync(sleeper, &elapsed);
    assert_true(elapsed >= 20 * 1000000LL);
}

static int pool_fn(void *opaque)
{
    return *(int *)opaque * 2;
}

static void pool_co(void *opaque)
{
    int *v = opaque;
    *v = thread_pool_co_run(pool_fn, v);
}

static void test_thread_pool(void **state)
{
    int v = 21;
    co_run_sync(pool_co, &v);
    assert_int_equal(v, 42);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enter_yield),
        cmocka_unit_test(test_nested),
        cmocka_unit_test(test_many),
        cmocka_unit_test(test_mutex),
        cmocka_unit_test(test_queue),
        cmocka_unit_test(test_rwlock),
        cmocka_unit_test(test_nested_bh_wait),
        cmocka_unit_test(test_sleep),
        cmocka_unit_test(test_thread_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
