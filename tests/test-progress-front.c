/*
 * A job's progress as the part of the disk done from its start without a
 * gap (jobs/progress-front.c): ranges finished in any order, overlapping
 * or again, count only once they join the front.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "progress-front.h"

#define K 1024

static void test_in_order(void **state)
{
    Job job = { 0 };
    ProgressFront pf;
    (void)state;
    progress_front_init(&pf, &job);
    progress_front_done(&pf, 0, 64 * K);
    assert_int_equal(job.progress_current, 64 * K);
    progress_front_done(&pf, 64 * K, 448 * K);
    assert_int_equal(job.progress_current, 512 * K);
    assert_int_equal(pf.ahead->len, 0);
    progress_front_destroy(&pf);
}

/* A failed range holds the front where it starts; the rest waits. */
static void test_gap_holds_the_front(void **state)
{
    Job job = { 0 };
    ProgressFront pf;
    (void)state;
    progress_front_init(&pf, &job);
    progress_front_done(&pf, 0, 512 * K);
    progress_front_done(&pf, 1024 * K, 512 * K);
    progress_front_done(&pf, 1536 * K, 512 * K);
    progress_front_done(&pf, 3072 * K, 512 * K);
    assert_int_equal(job.progress_current, 512 * K);
    /* joined: [1M, 2M) and [3M, 3.5M) */
    assert_int_equal(pf.ahead->len, 4);
    progress_front_done(&pf, 512 * K, 512 * K);
    assert_int_equal(job.progress_current, 2048 * K);
    progress_front_done(&pf, 2048 * K, 1024 * K);
    assert_int_equal(job.progress_current, 3584 * K);
    assert_int_equal(pf.ahead->len, 0);
    progress_front_destroy(&pf);
}

/* A range done again (a retry), or overlapping others, counts once. */
static void test_overlaps_count_once(void **state)
{
    Job job = { 0 };
    ProgressFront pf;
    (void)state;
    progress_front_init(&pf, &job);
    progress_front_done(&pf, 0, 128 * K);
    progress_front_done(&pf, 0, 64 * K);
    assert_int_equal(job.progress_current, 128 * K);
    progress_front_done(&pf, 256 * K, 128 * K);
    progress_front_done(&pf, 320 * K, 128 * K);
    progress_front_done(&pf, 512 * K, 64 * K);
    progress_front_done(&pf, 200 * K, 400 * K);
    assert_int_equal(pf.ahead->len, 2);
    assert_int_equal(job.progress_current, 128 * K);
    progress_front_done(&pf, 100 * K, 100 * K);
    assert_int_equal(job.progress_current, 600 * K);
    assert_int_equal(pf.ahead->len, 0);
    progress_front_done(&pf, 0, 0);
    assert_int_equal(job.progress_current, 600 * K);
    progress_front_destroy(&pf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_in_order),
        cmocka_unit_test(test_gap_holds_the_front),
        cmocka_unit_test(test_overlaps_count_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
