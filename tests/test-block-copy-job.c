/*
 * The copy engine (jobs/block-copy.c) run by a job of its own on null-co
 * nodes: a pause waits for the chunks in flight and then nothing moves,
 * a cancel leaves what was not copied marked, and the rate limit stops
 * the copy (after the skips, one chunk before it applies) while a
 * copy-before-write range does not wait for it.  The rest of the engine:
 * test-block-copy.c and test-block-copy-range.c.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <glib.h>

#include "strata/backend.h"
#include "strata/block-copy.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "strata/units.h"
#include "block-copy-fixture.h"
#include "support.h"

/* ---- With a job ---- */

typedef struct CopyJob {
    Job common;
    BlockCopyState *s;
    BlockCopyOptions o;
    Seen seen;
    int max_in_flight_at_pause;
} CopyJob;

static void job_progress_cb(void *opaque, int64_t offset, int64_t bytes,
                            BlockCopyKind kind)
{
    CopyJob *j = opaque;
    job_progress_update(&j->common, bytes);
    on_progress(&j->seen, offset, bytes, kind);
}

static int coroutine_fn copy_job_run(Job *job, GError **errp)
{
    CopyJob *j = (CopyJob *)job;
    bool is_read;
    job_progress_set_remaining(job, block_copy_remaining(j->s));
    return block_copy_run(j->s, job, &is_read);
}

static void coroutine_fn copy_job_pause(Job *job)
{
    CopyJob *j = (CopyJob *)job;
    j->max_in_flight_at_pause = MAX(j->max_in_flight_at_pause,
                                    block_copy_in_flight(j->s));
}

static const JobDriver copy_job_driver = {
    .instance_size = sizeof(CopyJob),
    .job_type = JOB_TYPE_BACKUP,
    .run = copy_job_run,
    .pause = copy_job_pause,
};

static int job_ret;
static bool job_finished;
static Gate job_gate;

static void job_done(void *opaque, int ret)
{
    job_ret = ret;
    job_finished = true;
}

static CopyJob *copy_job_new(BlockNode *src, BlockNode *dst)
{
    GError *err = NULL;
    CopyJob *j = job_create("bc", &copy_job_driver, NULL, JOB_DEFAULT,
                            job_done, NULL, &err);
    assert_non_null(j);
    j->o.source = job_add_node(&j->common, "source", src,
                               BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, &err);
    j->o.target = job_add_node(&j->common, "target", dst, BLK_PERM_WRITE,
                               BLK_PERM_ALL, &err);
    assert_non_null(j->o.source);
    assert_non_null(j->o.target);
    gate_init(&job_gate, 0);
    job_gate.open = true;
    j->o.classify = gated_classify;
    j->o.classify_opaque = &job_gate;
    j->o.progress = job_progress_cb;
    j->o.progress_opaque = j;
    j->s = new_copy(&j->o);
    job_finished = false;
    return j;
}

/* Drop the test's job reference, then the engine and the nodes. */
static void copy_job_free(CopyJob *j, BlockNode *src, BlockNode *dst)
{
    BlockCopyState *s = j->s;      /* j goes with the job */

    job_unref(&j->common);
    block_copy_free(s);
    node_unref(src);
    node_unref(dst);
}

static void test_job_pause_and_finish(void **state)
{
    const int64_t len = 32 * MiB;
    BlockNode *src = open_null(len, 500000), *dst = open_null(len, 0);
    CopyJob *j = copy_job_new(src, dst);
    BlockCopyState *s = j->s;
    Job *job = &j->common;

    /* The first four granules go through, the rest wait at the gate. */
    job_gate.from = 4 * GRAN;
    job_gate.open = false;
    job_ref(job);
    job_start(job);
    LOOP_WAIT_WHILE(job->progress_current < 4 * GRAN);
    assert_true(job_user_pause(job, NULL));
    for (int i = 0; i < 20; i++) {
        loop_iterate(false);
    }
    /* A pause waits for the chunks in flight. */
    assert_false(job->paused);
    assert_true(job_gate.waiting > 0);
    assert_int_equal(block_copy_in_flight(s), job_gate.waiting);
    gate_open(&job_gate);
    LOOP_WAIT_WHILE(!job->paused);
    /* Parked with nothing in flight, and nothing moves. */
    assert_int_equal(block_copy_in_flight(s), 0);
    assert_int_equal(j->max_in_flight_at_pause, 0);
    uint64_t done = job->progress_current;
    assert_true(done < (uint64_t)len);
    for (int i = 0; i < 50; i++) {
        loop_iterate(false);
    }
    assert_int_equal(job->progress_current, done);
    assert_true(job_user_resume(job, NULL));
    LOOP_WAIT_WHILE(!job_finished);
    assert_int_equal(job_ret, 0);
    assert_int_equal(job->progress_current, len);
    assert_int_equal(block_copy_remaining(s), 0);
    copy_job_free(j, src, dst);
}

static void test_job_cancel(void **state)
{
    const int64_t len = 256 * MiB;
    BlockNode *src = open_null(len, 1000000), *dst = open_null(len, 0);
    CopyJob *j = copy_job_new(src, dst);
    BlockCopyState *s = j->s;
    Job *job = &j->common;

    job_ref(job);
    job_start(job);
    LOOP_WAIT_WHILE(job->progress_current == 0);
    assert_int_equal(job_cancel_sync(job, true), -ECANCELED);
    assert_int_equal(block_copy_in_flight(s), 0);
    assert_true(block_copy_remaining(s) > 0);
    /* What was not copied is still marked: nothing was lost. */
    assert_int_equal(block_copy_remaining(s) + j->seen.bytes[BLOCK_COPY_DATA],
                     len);
    copy_job_free(j, src, dst);
}

/* set-speed: the copy stops at the limit and a cancel ends the sleep. */
static void test_job_speed(void **state)
{
    const int64_t len = 64 * MiB;
    BlockNode *src = open_null(len, 100000), *dst = open_null(len, 0);
    CopyJob *j = copy_job_new(src, dst);
    BlockCopyState *s = j->s;
    Job *job = &j->common;
    BlockCopyStats st;

    /* The first 8 MiB are skipped: the limit charges only copies. */
    job_gate.skip_below = 8 * MiB;
    assert_true(job_set_speed(job, 1, NULL));
    job_ref(job);
    job_start(job);
    LOOP_WAIT_WHILE(job->busy);
    /* Asleep in the limit with nothing in flight. */
    assert_int_equal(block_copy_in_flight(s), 0);
    block_copy_get_stats(s, &st);
    for (int i = 0; i < 50; i++) {
        loop_iterate(false);
    }
    BlockCopyStats st2;
    block_copy_get_stats(s, &st2);
    assert_int_equal(st2.bytes_read, st.bytes_read);
    /* One chunk went before the limit applied, as in QEMU, after all
     * the skips. */
    assert_int_equal(st.bytes_read, GRAN);
    assert_int_equal(st.bytes_skipped, 8 * MiB);
    /* A copy-before-write range does not wait for the limit. */
    Run r = { .s = s, .offset = 32 * MiB, .bytes = 4096 };
    co_enter(co_create(range_co, &r));
    LOOP_WAIT_WHILE(!r.done);
    assert_int_equal(r.ret, 0);
    assert_true(job->busy == false);
    block_copy_get_stats(s, &st2);
    assert_int_equal(st2.bytes_read, GRAN + GRAN);
    assert_int_equal(job_cancel_sync(job, true), -ECANCELED);
    copy_job_free(j, src, dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_pause_and_finish),
        cmocka_unit_test(test_job_cancel),
        cmocka_unit_test(test_job_speed),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
