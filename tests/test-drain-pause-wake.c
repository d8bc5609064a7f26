/*
 * A drain that pauses a job busy in the copy engine, all of whose copies
 * run at idle class (strata/pool-class.h), on a node where the job has
 * nothing in flight (an intermediate image of a commit or stream, a
 * mirror's source while its copies write the target): the drain has no
 * request of its own to promote (block/drain.c sets_promote), and the job
 * reaches its pause point only once one of its copies ends.  job_pause()
 * tells the job (JobDriver.pause_wanted), and the engine promotes every
 * copy in flight (block_copy_promote).
 *
 * The watchdog is off here and the idle threads "starve" (the pool's
 * sched hook holds them until promoted, 10 s at most): only the job's
 * promotion can end the wait.  Needs the right to leave SCHED_IDLE again
 * (root, CAP_SYS_NICE or RLIMIT_NICE 20); skipped without it.
 */
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>
#include <glib.h>

#include "strata/block-copy.h"
#include "strata/block-ops.h"
#include "strata/coroutine.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "strata/pool-class.h"
#include "strata/units.h"
#include "support.h"

#define LEN ((int64_t)(8 * MiB))
#define STARVE_MAX_US (10 * G_USEC_PER_SEC)

static gint starving, starve_timed_out, starve_armed;

/* Idle threads on a machine whose normal threads keep every CPU busy:
 * while armed, none runs until someone promotes it (STARVE_MAX_US at
 * most); so the job's other offloads cannot end and wake it either. */
static int starve_hook(pid_t tid, int policy, const struct sched_param *p)
{
    int ret = sched_setscheduler(tid, policy, p);

    if (ret == 0 && tid == 0 && policy == SCHED_IDLE &&
        g_atomic_int_get(&starve_armed)) {
        gint64 end = g_get_monotonic_time() + STARVE_MAX_US;
        g_atomic_int_inc(&starving);
        while (sched_getscheduler(0) == SCHED_IDLE) {
            if (g_get_monotonic_time() > end) {
                g_atomic_int_set(&starve_timed_out, 1);
                break;
            }
            g_usleep(200);
        }
        g_atomic_int_add(&starving, -1);
    }
    return ret;
}

typedef struct EngineJob {
    Job common;
    BlockCopyState *s;
} EngineJob;

static int coroutine_fn engine_job_run(Job *job, GError **errp)
{
    EngineJob *j = (EngineJob *)job;
    bool is_read;
    return block_copy_run(j->s, job, &is_read);
}

/* As mirror's, commit's, backup's and stream's. */
static void engine_job_pause_wanted(Job *job)
{
    EngineJob *j = (EngineJob *)job;
    block_copy_promote(j->s);
}

static const JobDriver engine_job_driver = {
    .instance_size = sizeof(EngineJob),
    .job_type = JOB_TYPE_COMMIT,
    .run = engine_job_run,
    .pause_wanted = engine_job_pause_wanted,
};

static bool job_finished;
static int job_ret;

static void job_done(void *opaque, int ret)
{
    job_ret = ret;
    job_finished = true;
}

typedef struct Drain {
    BlockNode *bs;
    bool begun, done;
    gint64 begin_us;        /* how long node_drain_begin() took */
} Drain;

static void coroutine_fn drain_co(void *opaque)
{
    Drain *d = opaque;
    gint64 t0 = g_get_monotonic_time();
    node_drain_begin(d->bs);
    d->begin_us = g_get_monotonic_time() - t0;
    d->begun = true;
    /* The job is parked with nothing in flight: what it starts once
     * resumed runs as on an idle machine. */
    g_atomic_int_set(&starve_armed, 0);
    node_drain_end(d->bs);
    d->done = true;
}

/*
 * A copy job's offloads starve at idle class; a drain (from a coroutine:
 * a QMP command) of a third node the job holds, with nothing in flight
 * there, begins at once, the job parked, without the watchdog.  Before,
 * the drain waited until a starving thread got a CPU (here: the hook's
 * 10 s; on a loaded machine: the 10 ms watchdog).
 */
static void test_pause_promotes_job_copies(void **state)
{
    uint8_t *data = g_malloc(LEN);
    g_autofree char *sp = NULL, *tp = NULL, *op = NULL;
    ThreadPoolClassStats a, b;
    GError *err = NULL;

    thread_pool_set_max(64);
    thread_pool_set_idle_limit_ms(0);
    if (!thread_pool_idle_enabled()) {
        g_free(data);
        print_message("idle class off (STRATA_IDLE_COPY=0, or no right to "
                      "leave SCHED_IDLE): skipped\n");
        skip();
    }
    fill_nonzero(data, LEN, 5);
    sp = make_file("src", data, LEN);
    tp = make_file("dst", NULL, LEN);
    op = make_file("other", NULL, LEN);
    BlockNode *src = open_json(json_pack("{s:s, s:s}", "driver", "file",
                                         "filename", sp));
    BlockNode *dst = open_json(json_pack("{s:s, s:s}", "driver", "file",
                                         "filename", tp));
    BlockNode *oth = open_json(json_pack("{s:s, s:s}", "driver", "file",
                                         "filename", op));
    BlockCopyOptions o = {
        .granularity = 64 * KiB,
        .max_chunk = MiB,
        .use_copy_range = true,
    };
    EngineJob *j = job_create("pw", &engine_job_driver, NULL, JOB_DEFAULT,
                              job_done, NULL, &err);
    assert_non_null(j);
    o.source = job_add_node(&j->common, "source", src,
                            BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, &err);
    o.target = job_add_node(&j->common, "target", dst, BLK_PERM_WRITE,
                            BLK_PERM_ALL, &err);
    /* An image the job holds and does not copy (a commit's intermediate). */
    assert_non_null(job_add_node(&j->common, "intermediate node", oth, 0,
                                 BLK_PERM_ALL, &err));
    assert_non_null(o.source);
    assert_non_null(o.target);
    j->s = block_copy_new(&o, &err);
    assert_non_null(j->s);

    g_atomic_int_set(&starve_timed_out, 0);
    g_atomic_int_set(&starve_armed, 1);
    thread_pool_set_sched_hook(starve_hook);
    job_finished = false;
    job_ref(&j->common);
    job_start(&j->common);
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (!g_atomic_int_get(&starving)) {
        if (g_get_monotonic_time() > end) {
            fail_msg("no background call went idle in 10 s");
        }
        loop_iterate(false);
        g_usleep(200);
    }

    /* Let the job fill its offload slots: all of them starve. */
    for (int i = 0; i < 20; i++) {
        loop_iterate(false);
        g_usleep(1000);
    }
    assert_true(g_atomic_int_get(&starving) > 0);
    thread_pool_class_stats(&a);
    Drain d = { .bs = oth };
    co_enter(co_create(drain_co, &d));
    LOOP_WAIT_WHILE(!d.done);
    thread_pool_class_stats(&b);
    LOOP_WAIT_WHILE(!job_finished);
    thread_pool_set_sched_hook(NULL);
    thread_pool_set_idle_limit_ms(10);

    print_message("drain began after %" G_GINT64_FORMAT " us, %" PRIu64
                  " calls promoted\n", d.begin_us, b.promoted - a.promoted);
    assert_false(g_atomic_int_get(&starve_timed_out));
    assert_true(d.begin_us < 2 * G_USEC_PER_SEC);
    assert_true(b.promoted > a.promoted);
    assert_int_equal(job_ret, 0);
    BlockCopyState *s = j->s;
    job_unref(&j->common);
    block_copy_free(s);
    node_unref(src);
    node_unref(dst);
    node_unref(oth);
    expect_file(tp, data, LEN);
    g_free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pause_promotes_job_copies),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
