/*
 * The throttle accounting (util/throttle.c) with a clock of the test's
 * own: the validity checks in QEMU's order, the wait of one bucket, the
 * leak, the accounting of reads, writes and iops-size, and simulated runs
 * that must let through what the limits say (average, burst rate, burst
 * length) and no more.  The groups (block/throttle-groups.c) with real
 * timers: a queued request waits for its timer, a drain lets the queue
 * through, two members share one limit and take turns.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <limits.h>
#include <string.h>
#include <cmocka.h>
#include <glib.h>

#include "strata/coroutine.h"
#include "strata/error.h"
#include "strata/loop.h"
#include "strata/throttle.h"

#define SEC 1000000000LL

static void expect_invalid(const ThrottleConfig *cfg, const char *msg)
{
    GError *err = NULL;
    assert_false(throttle_is_valid(cfg, &err));
    assert_non_null(err);
    assert_string_equal(err->message, msg);
    g_error_free(err);
}

static void test_config_init(void **state)
{
    ThrottleConfig cfg;
    (void)state;
    throttle_config_init(&cfg);
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        assert_int_equal(cfg.buckets[i].burst_length, 1);
        assert_int_equal(cfg.buckets[i].avg, 0);
        assert_int_equal(cfg.buckets[i].max, 0);
    }
    assert_false(throttle_enabled(&cfg));
    assert_true(throttle_is_valid(&cfg, NULL));
    cfg.buckets[THROTTLE_OPS_WRITE].avg = 1;
    assert_true(throttle_enabled(&cfg));
}

static void test_is_valid(void **state)
{
    ThrottleConfig cfg;
    (void)state;

    /* totals with read/write limits, for averages and for maxima */
    for (int total = THROTTLE_BPS_TOTAL; total <= THROTTLE_OPS_TOTAL;
         total += THROTTLE_OPS_TOTAL) {
        for (int rw = 1; rw <= 2; rw++) {
            throttle_config_init(&cfg);
            cfg.buckets[total].avg = 10;
            cfg.buckets[total + rw].avg = 10;
            expect_invalid(&cfg, "bps/iops/max total values and read/write "
                           "values cannot be used at the same time");
            throttle_config_init(&cfg);
            cfg.buckets[total].avg = 10;
            cfg.buckets[total].max = 10;
            cfg.buckets[total + rw].avg = 0;
            cfg.buckets[total + rw].max = 10;
            expect_invalid(&cfg, "bps/iops/max total values and read/write "
                           "values cannot be used at the same time");
        }
    }
    /* reads and writes side by side are fine */
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_BPS_READ].avg = 10;
    cfg.buckets[THROTTLE_BPS_WRITE].avg = 20;
    cfg.buckets[THROTTLE_OPS_TOTAL].avg = 5;
    assert_true(throttle_is_valid(&cfg, NULL));

    throttle_config_init(&cfg);
    cfg.op_size = 4096;
    cfg.buckets[THROTTLE_BPS_TOTAL].avg = 10;
    expect_invalid(&cfg, "iops size requires an iops value to be set");
    cfg.buckets[THROTTLE_OPS_READ].avg = 1;
    assert_true(throttle_is_valid(&cfg, NULL));

    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_OPS_READ].avg = THROTTLE_VALUE_MAX;
    assert_true(throttle_is_valid(&cfg, NULL));
    cfg.buckets[THROTTLE_OPS_READ].avg = THROTTLE_VALUE_MAX + 1;
    expect_invalid(&cfg, "bps/iops/max values must be within "
                   "[0, 1000000000000000]");
    /* a negative number from QMP is a huge one here */
    cfg.buckets[THROTTLE_OPS_READ].avg = (uint64_t)-1;
    expect_invalid(&cfg, "bps/iops/max values must be within "
                   "[0, 1000000000000000]");

    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_BPS_WRITE].burst_length = 0;
    expect_invalid(&cfg, "the burst length cannot be 0");

    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_BPS_WRITE].avg = 10;
    cfg.buckets[THROTTLE_BPS_WRITE].burst_length = 2;
    expect_invalid(&cfg, "burst length set without burst rate");
    cfg.buckets[THROTTLE_BPS_WRITE].max = 20;
    assert_true(throttle_is_valid(&cfg, NULL));
    cfg.buckets[THROTTLE_BPS_WRITE].max = 20000000;
    cfg.buckets[THROTTLE_BPS_WRITE].burst_length = 2000000000;
    expect_invalid(&cfg, "burst length too high for this burst rate");

    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_OPS_WRITE].max = 10;
    expect_invalid(&cfg, "bps_max/iops_max require corresponding bps/iops "
                   "values");
    cfg.buckets[THROTTLE_OPS_WRITE].avg = 11;
    expect_invalid(&cfg, "bps_max/iops_max cannot be lower than bps/iops");
    cfg.buckets[THROTTLE_OPS_WRITE].avg = 10;
    assert_true(throttle_is_valid(&cfg, NULL));
}

static void test_compute_wait(void **state)
{
    LeakyBucket bkt = { 0 };
    (void)state;

    /* no limit: never wait */
    bkt.max = 15;
    bkt.level = 1.5;
    bkt.burst_length = 1;
    assert_int_equal(throttle_compute_wait(&bkt), 0);

    /* with max, the bucket holds max * burst_length */
    bkt.avg = 150;
    bkt.level = 15;
    assert_int_equal(throttle_compute_wait(&bkt), 0);
    bkt.level = 9;
    assert_int_equal(throttle_compute_wait(&bkt), 0);
    /* half an operation over: the time half an operation takes at avg */
    bkt.level = 15.5;
    assert_int_equal(throttle_compute_wait(&bkt), SEC / 150 / 2);

    /* without max, a tenth of a second at avg */
    bkt.max = 0;
    bkt.avg = 1000;
    bkt.level = 100;
    assert_int_equal(throttle_compute_wait(&bkt), 0);
    bkt.level = 150;
    assert_int_equal(throttle_compute_wait(&bkt), SEC / 20);

    /* a burst longer than a second: the burst bucket holds max / 10 */
    bkt.avg = 10;
    bkt.max = 100;
    bkt.burst_length = 3;
    bkt.level = 50;            /* far below 300 */
    bkt.burst_level = 10;
    assert_int_equal(throttle_compute_wait(&bkt), 0);
    bkt.burst_level = 15;      /* 5 over, at max */
    assert_int_equal(throttle_compute_wait(&bkt), SEC / 20);
    bkt.level = 310;           /* the main bucket decides first */
    assert_int_equal(throttle_compute_wait(&bkt), SEC);
}

static void test_leak(void **state)
{
    LeakyBucket bkt = { .avg = 100, .max = 1000, .level = 50,
                        .burst_level = 200, .burst_length = 1 };
    (void)state;

    throttle_leak_bucket(&bkt, SEC / 10);
    assert_true(bkt.level > 39.999 && bkt.level < 40.001);
    /* a one-second burst has no burst bucket */
    assert_true(bkt.burst_level > 199.999);
    throttle_leak_bucket(&bkt, SEC);
    assert_true(bkt.level == 0);

    bkt.burst_length = 2;
    bkt.level = 50;
    throttle_leak_bucket(&bkt, SEC / 10);
    assert_true(bkt.burst_level > 99.999 && bkt.burst_level < 100.001);
    throttle_leak_bucket(&bkt, SEC);
    assert_true(bkt.burst_level == 0);
}

static void test_account(void **state)
{
    ThrottleConfig cfg;
    ThrottleState ts;
    (void)state;

    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_OPS_WRITE].burst_length = 2;
    throttle_config(&ts, &cfg, 0);
    throttle_account(&ts, false, 4096);
    throttle_account(&ts, true, 512);
    throttle_account(&ts, true, 512);
    const LeakyBucket *b = ts.cfg.buckets;
    assert_true(b[THROTTLE_BPS_TOTAL].level == 5120);
    assert_true(b[THROTTLE_BPS_READ].level == 4096);
    assert_true(b[THROTTLE_BPS_WRITE].level == 1024);
    assert_true(b[THROTTLE_OPS_TOTAL].level == 3);
    assert_true(b[THROTTLE_OPS_READ].level == 1);
    assert_true(b[THROTTLE_OPS_WRITE].level == 2);
    /* only buckets with a burst longer than a second fill a burst level */
    assert_true(b[THROTTLE_OPS_WRITE].burst_level == 2);
    assert_true(b[THROTTLE_OPS_READ].burst_level == 0);

    /* iops-size: a larger operation counts as several */
    cfg.op_size = 1024;
    throttle_config(&ts, &cfg, 0);
    assert_true(ts.cfg.buckets[THROTTLE_OPS_TOTAL].level == 0);
    throttle_account(&ts, false, 4096);
    throttle_account(&ts, false, 512);
    assert_true(ts.cfg.buckets[THROTTLE_OPS_READ].level == 5);
}

/*
 * Run requests of `size` bytes as fast as the limits allow for `secs`
 * simulated seconds (each waits until compute_timer says it may go);
 * returns how many went.
 */
static int64_t simulate(ThrottleState *ts, bool is_write, uint64_t size,
                        int64_t secs)
{
    int64_t now = 0, count = 0, next;

    while (true) {
        while (throttle_compute_timer(ts, is_write, now, &next)) {
            assert_true(next > now);
            now = next;
        }
        if (now >= secs * SEC) {
            return count;
        }
        throttle_account(ts, is_write, size);
        count++;
    }
}

static void test_average(void **state)
{
    ThrottleConfig cfg;
    ThrottleState ts;
    (void)state;

    /* 1 MB/s in 4 KiB writes for 20 s: 20 MB and the tenth of a second */
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_BPS_TOTAL].avg = 1000000;
    throttle_config(&ts, &cfg, 0);
    int64_t n = simulate(&ts, true, 4096, 20);
    int64_t bytes = n * 4096;
    assert_true(bytes >= 20 * 1000000);
    assert_true(bytes <= 20 * 1000000 + 100000 + 2 * 4096);

    /* a write limit does not hold back reads */
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_OPS_WRITE].avg = 10;
    throttle_config(&ts, &cfg, 0);
    int64_t now = 0, next;
    for (int i = 0; i < 1000; i++) {
        assert_false(throttle_compute_timer(&ts, false, now, &next));
        assert_int_equal(next, now);
        throttle_account(&ts, false, 512);
    }
    /* 100 ops/s of reads with iops-size 1024 in 4 KiB: 25 ops/s */
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_OPS_READ].avg = 100;
    cfg.op_size = 1024;
    throttle_config(&ts, &cfg, 0);
    n = simulate(&ts, false, 4096, 10);
    assert_true(n >= 250 && n <= 250 + 3 + 1);
}

static void test_burst(void **state)
{
    ThrottleConfig cfg;
    ThrottleState ts;
    (void)state;

    /*
     * 10 ops/s, bursts of 100 ops/s for 3 s: the first 3 s at the burst
     * rate (300 ops and a tenth of a second of burst), then 10 ops/s.
     */
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_OPS_TOTAL].avg = 10;
    cfg.buckets[THROTTLE_OPS_TOTAL].max = 100;
    cfg.buckets[THROTTLE_OPS_TOTAL].burst_length = 3;
    assert_true(throttle_is_valid(&cfg, NULL));
    throttle_config(&ts, &cfg, 0);
    int64_t n = simulate(&ts, true, 512, 1);
    assert_true(n >= 100 && n <= 111);
    throttle_config(&ts, &cfg, 0);
    n = simulate(&ts, true, 512, 3);
    /* the burst bucket leaked at 10/s meanwhile: 300 + 3 s * 10 at most */
    assert_true(n >= 290 && n <= 341);
    throttle_config(&ts, &cfg, 0);
    int64_t long_run = simulate(&ts, true, 512, 60);
    /* 60 s at 10/s plus the burst allowance (300) */
    assert_true(long_run >= 600 + 290 && long_run <= 600 + 311);
}

static void test_params(void **state)
{
    ThrottleConfig cfg;
    GError *err = NULL;
    (void)state;

    throttle_config_init(&cfg);
    int n = 0;
    for (const ThrottleParam *p = throttle_params; p->name; p++) {
        assert_ptr_equal(throttle_param_find(p->name), p);
        assert_true(throttle_param_set(&cfg, p, 7, NULL));
        assert_int_equal(throttle_param_get(&cfg, p), 7);
        n++;
    }
    assert_int_equal(n, 19);
    assert_null(throttle_param_find("x-iops-total"));
    assert_int_equal(cfg.buckets[THROTTLE_BPS_WRITE].max, 7);
    assert_int_equal(cfg.op_size, 7);

    const ThrottleParam *len = throttle_param_find("bps-read-max-length");
    assert_false(throttle_param_set(&cfg, len, (int64_t)UINT_MAX + 1, &err));
    assert_string_equal(err->message, "bps-read-max-length value must be in "
                        "the range [0, 4294967295]");
    g_clear_error(&err);
    /* a negative length wraps, as QEMU's signed comparison lets it */
    assert_true(throttle_param_set(&cfg, len, -1, NULL));
    assert_int_equal(cfg.buckets[THROTTLE_BPS_READ].burst_length, UINT_MAX);
}

/* ---- Groups, with the loop's real timers ---- */

typedef struct {
    ThrottleGroupMember *tgm;
    int64_t bytes;
    bool done;
    int order;          /* when it was let through: 1, 2, ... */
} Req;

static int let_through;

static void coroutine_fn req_co(void *opaque)
{
    Req *r = opaque;
    throttle_group_co_intercept(r->tgm, r->bytes, true);
    r->done = true;
    r->order = ++let_through;
}

static void start(Req *r, ThrottleGroupMember *tgm, int64_t bytes)
{
    r->tgm = tgm;
    r->bytes = bytes;
    r->done = false;
    co_enter(co_create(req_co, r));
}

static ThrottleGroup *group(const char *name, int64_t bps)
{
    ThrottleConfig cfg;
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_BPS_TOTAL].avg = (uint64_t)bps;
    ThrottleGroup *tg = throttle_group_create(name, &cfg, NULL);
    assert_non_null(tg);
    return tg;
}

static void test_group_timer(void **state)
{
    ThrottleGroupMember m = { 0 };
    Req r[3];
    GError *err = NULL;
    (void)state;

    /* 1 MB/s: a 100 kB request passes, the next waits 0.1 s */
    ThrottleGroup *tg = group("g", 1000000);
    ThrottleConfig cfg;
    throttle_config_init(&cfg);
    assert_null(throttle_group_create("g", &cfg, &err));
    assert_string_equal(err->message, "A group with this name already exists");
    g_clear_error(&err);
    assert_ptr_equal(throttle_group_find("g"), tg);

    throttle_group_register(&m, "g", loop_get());
    assert_true(throttle_group_in_use(tg));
    int64_t t0 = clock_ns();
    start(&r[0], &m, 200000);
    assert_true(r[0].done);
    start(&r[1], &m, 1000);
    start(&r[2], &m, 1000);
    assert_false(r[1].done);
    assert_false(r[2].done);
    LOOP_WAIT_WHILE(!r[2].done);
    assert_true(r[1].done);
    /* 200 kB at 1 MB/s with 100 kB of burst: not before 0.1 s */
    assert_true(clock_ns() - t0 >= SEC / 10);
    throttle_group_unregister(&m);
    assert_false(throttle_group_in_use(tg));
    throttle_group_destroy(tg);
    assert_null(throttle_group_find("g"));
}

static void test_group_drain(void **state)
{
    ThrottleGroupMember m = { 0 };
    Req r[4];
    (void)state;

    /* 1 kB/s: requests after the first would wait for minutes */
    ThrottleGroup *tg = group("slow", 1000);
    throttle_group_register(&m, "slow", loop_get());
    for (int i = 0; i < 4; i++) {
        start(&r[i], &m, 100000);
    }
    assert_true(r[0].done);
    assert_false(r[1].done);
    throttle_group_drained_begin(&m);
    LOOP_WAIT_WHILE(!r[1].done || !r[2].done || !r[3].done);
    /* while drained, new requests do not wait either */
    Req extra;
    start(&extra, &m, 100000);
    assert_true(extra.done);
    throttle_group_drained_end(&m);

    /* new limits empty the buckets and wake the queue */
    start(&r[0], &m, 100000);
    start(&r[1], &m, 100);
    assert_false(r[1].done);
    ThrottleConfig cfg;
    throttle_config_init(&cfg);
    throttle_group_set_config(tg, &cfg);
    LOOP_WAIT_WHILE(!r[1].done);
    throttle_group_unregister(&m);
    throttle_group_destroy(tg);
}

static void test_group_shared(void **state)
{
    ThrottleGroupMember a = { 0 }, b = { 0 };
    Req ra[2], rb[2];
    (void)state;

    /* two members: the second one's request waits for the first one's */
    ThrottleGroup *tg = group("shared", 1000000);
    throttle_group_register(&a, "shared", loop_get());
    throttle_group_register(&b, "shared", loop_get());
    int64_t t0 = clock_ns();
    start(&ra[0], &a, 300000);
    assert_true(ra[0].done);
    start(&rb[0], &b, 1000);
    start(&ra[1], &a, 1000);
    start(&rb[1], &b, 1000);
    assert_false(rb[0].done);
    LOOP_WAIT_WHILE(!rb[0].done || !ra[1].done || !rb[1].done);
    /* 300 kB at 1 MB/s, 100 kB of it as burst */
    assert_true(clock_ns() - t0 >= SEC / 5);
    throttle_group_unregister(&a);
    /* the remaining member keeps the group going */
    start(&rb[0], &b, 10);
    LOOP_WAIT_WHILE(!rb[0].done);
    throttle_group_unregister(&b);
    throttle_group_destroy(tg);
}

static void test_group_round_robin(void **state)
{
    ThrottleGroupMember a = { 0 }, b = { 0 };
    Req ra[10], rb;
    (void)state;

    /*
     * a queues ten requests of a tenth of a second each; b's one request,
     * queued after them, gets the turn after a's next one, not after all
     * of a's (QEMU's round robin between the members of a group).
     */
    ThrottleGroup *tg = group("rr", 1000000);
    throttle_group_register(&a, "rr", loop_get());
    throttle_group_register(&b, "rr", loop_get());
    let_through = 0;
    for (int i = 0; i < 10; i++) {
        start(&ra[i], &a, 100000);
    }
    assert_true(ra[0].done && ra[1].done);
    assert_false(ra[2].done);
    start(&rb, &b, 100000);
    assert_false(rb.done);
    LOOP_WAIT_WHILE(!rb.done);
    assert_int_equal(rb.order, 4);
    assert_true(ra[2].done);
    assert_false(ra[3].done);
    /* a's others go once drained */
    throttle_group_drained_begin(&a);
    LOOP_WAIT_WHILE(!ra[9].done);
    throttle_group_drained_end(&a);
    for (int i = 3; i < 10; i++) {
        assert_int_equal(ra[i].order, i + 2);
    }
    throttle_group_unregister(&a);
    throttle_group_unregister(&b);
    throttle_group_destroy(tg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_init),
        cmocka_unit_test(test_is_valid),
        cmocka_unit_test(test_compute_wait),
        cmocka_unit_test(test_leak),
        cmocka_unit_test(test_account),
        cmocka_unit_test(test_average),
        cmocka_unit_test(test_burst),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_group_timer),
        cmocka_unit_test(test_group_drain),
        cmocka_unit_test(test_group_shared),
        cmocka_unit_test(test_group_round_robin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
