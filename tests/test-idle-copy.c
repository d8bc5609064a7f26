/*
 * Background copy calls at idle class (strata/pool-class.h): which pool
 * calls run at SCHED_IDLE (the work function reads its own thread's
 * policy), that a promotion brings a running or queued call back to
 * normal class, that a normal call never waits behind background ones
 * for a worker, and that the copy engine runs a job's offloads idle and
 * a copy a guest waits for (block_copy_range) at normal class; and that
 * a background call that runs too long is promoted anyway.
 *
 * Two failures are simulated through the pool's hook on its
 * sched_setscheduler calls: an idle thread that gets no CPU until it is
 * promoted (the watchdog off: only a waiter's promotion ends the wait),
 * and a worker that cannot leave SCHED_IDLE after its call.
 *
 * Needs the right to leave SCHED_IDLE again (root, CAP_SYS_NICE or
 * RLIMIT_NICE 20): without it the pool keeps the idle class off, and the
 * tests that need it are skipped with a message.
 */
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <glib.h>

#include <inttypes.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "strata/backend.h"
#include "strata/block-copy.h"
#include "strata/block-ops.h"
#include "strata/copy-range.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "strata/iov.h"
#include "strata/pool-class.h"
#include "strata/stream.h"
#include "strata/units.h"
#include "support.h"
#include "../block/qcow2/qcow2.h"     /* s->lock, to find its holder */

static bool have_idle_class(void)
{
    thread_pool_set_max(64);
    /* Held calls wait as long as a test wants (test_overdue: the limit). */
    thread_pool_set_idle_limit_ms(0);
    if (!thread_pool_idle_enabled()) {
        print_message("idle class off (STRATA_IDLE_COPY=0, or no right to "
                      "leave SCHED_IDLE): skipped\n");
        return false;
    }
    return true;
}

/* ---- Which calls run idle ---- */

static int policy_fn(void *opaque)
{
    return sched_getscheduler(0);
}

typedef struct Classes {
    int plain, bg_no_frame, bg, plain_in_frame, bg_promoted, after_bg;
    int bg_disabled;
} Classes;

static void classes_co(void *opaque)
{
    Classes *c = opaque;
    PoolBackground f;

    c->plain = thread_pool_co_run(policy_fn, NULL);
    c->bg_no_frame = thread_pool_co_run_background(policy_fn, NULL);
    pool_background_begin(&f);
    c->bg = thread_pool_co_run_background(policy_fn, NULL);
    /* One worker: the same thread, back at normal class. */
    c->after_bg = thread_pool_co_run(policy_fn, NULL);
    c->plain_in_frame = thread_pool_co_run(policy_fn, NULL);
    thread_pool_set_idle_enabled(false);
    c->bg_disabled = thread_pool_co_run_background(policy_fn, NULL);
    thread_pool_set_idle_enabled(true);
    pool_background_promote(&f);
    c->bg_promoted = thread_pool_co_run_background(policy_fn, NULL);
    pool_background_end(&f);
}

static void test_which_calls_idle(void **state)
{
    Classes c;

    if (!have_idle_class()) {
        skip();
    }
    thread_pool_set_max(1);
    co_run_sync(classes_co, &c);
    thread_pool_set_max(64);
    assert_int_equal(c.plain, SCHED_OTHER);
    assert_int_equal(c.bg_no_frame, SCHED_OTHER);
    assert_int_equal(c.bg, SCHED_IDLE);
    assert_int_equal(c.after_bg, SCHED_OTHER);
    assert_int_equal(c.plain_in_frame, SCHED_OTHER);
    assert_int_equal(c.bg_disabled, SCHED_OTHER);
    assert_int_equal(c.bg_promoted, SCHED_OTHER);
}

/* ---- Calls that block until the test lets them go ---- */

static gint seq;    /* order in which held calls started */

typedef struct Held {
    PoolBackground f;
    bool background;
    gint started;       /* seq at start, 0 before */
    gint release;
    int policy_start, policy_end;
    int ret;
    bool done;
} Held;

static int held_fn(void *opaque)
{
    Held *h = opaque;
    h->policy_start = sched_getscheduler(0);
    g_atomic_int_set(&h->started, g_atomic_int_add(&seq, 1) + 1);
    while (!g_atomic_int_get(&h->release)) {
        g_usleep(1000);
    }
    h->policy_end = sched_getscheduler(0);
    return 0;
}

static void held_co(void *opaque)
{
    Held *h = opaque;
    if (h->background) {
        pool_background_begin(&h->f);
        h->ret = thread_pool_co_run_background(held_fn, h);
        pool_background_end(&h->f);
    } else {
        h->ret = thread_pool_co_run(held_fn, h);
    }
    h->done = true;
}

static void held_start(Held *h, bool background)
{
    *h = (Held) { .background = background, .ret = -1 };
    co_enter(co_create(held_co, h));
}

/* A call that does not start within 10 s waits for something it should
 * not (a worker busy with background work). */
static void wait_started(Held *h)
{
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (!g_atomic_int_get(&h->started)) {
        if (g_get_monotonic_time() > end) {
            fail_msg("the call did not start in 10 s");
        }
        loop_iterate(false);
        g_usleep(500);
    }
}

static void finish(Held *h)
{
    g_atomic_int_set(&h->release, 1);
    LOOP_WAIT_WHILE(!h->done);
    assert_int_equal(h->ret, 0);
}

/* Let queued work start if it could: a worker has this long. */
static void settle(void)
{
    for (int i = 0; i < 50; i++) {
        loop_iterate(false);
        g_usleep(1000);
    }
}

/* A guest starts to wait for a running background call: it goes back to
 * normal class while it runs. */
static void test_promote_running(void **state)
{
    ThreadPoolClassStats a, b;
    Held h;

    if (!have_idle_class()) {
        skip();
    }
    thread_pool_class_stats(&a);
    held_start(&h, true);
    wait_started(&h);
    assert_int_equal(h.policy_start, SCHED_IDLE);
    pool_background_promote(&h.f);
    finish(&h);
    assert_int_equal(h.policy_end, SCHED_OTHER);
    thread_pool_class_stats(&b);
    assert_int_equal(b.idle_runs - a.idle_runs, 1);
    assert_int_equal(b.promoted - a.promoted, 1);
}

/*
 * Every worker the pool may have is busy with a background call: a
 * normal call gets a worker anyway, before the background call queued
 * ahead of it; and a queued background call that is promoted does too,
 * at normal class.
 */
static void test_normal_not_behind_background(void **state)
{
    enum { MAX_HELD = 16 };
    Held bg[MAX_HELD], late, urgent;
    int n = 0;

    if (!have_idle_class()) {
        skip();
    }
    thread_pool_set_max(1);
    /* Workers idle since earlier tests take background calls until the
     * pool is full; the last one started waits for a worker. */
    do {
        g_assert(n < MAX_HELD);
        held_start(&bg[n++], true);
        settle();
    } while (g_atomic_int_get(&bg[n - 1].started));
    Held *queued = &bg[n - 1];

    held_start(&urgent, false);
    wait_started(&urgent);
    assert_int_equal(urgent.policy_start, SCHED_OTHER);
    assert_int_equal(g_atomic_int_get(&queued->started), 0);
    /* Its worker is free again: the queued call runs there, idle. */
    finish(&urgent);
    wait_started(queued);
    assert_int_equal(queued->policy_start, SCHED_IDLE);

    held_start(&late, true);
    settle();
    assert_int_equal(g_atomic_int_get(&late.started), 0);
    /* Waited for: it gets a worker at once, at normal class. */
    pool_background_promote(&late.f);
    wait_started(&late);
    assert_int_equal(late.policy_start, SCHED_OTHER);

    finish(&late);
    for (int i = 0; i < n; i++) {
        finish(&bg[i]);
        assert_int_equal(bg[i].policy_start, SCHED_IDLE);
        assert_int_equal(bg[i].policy_end, SCHED_IDLE);
    }
    thread_pool_set_max(64);
}

/* Nobody waits for it, but it has run idle for too long: promoted, even
 * while the submitter's loop is blocked. */
static void test_overdue(void **state)
{
    ThreadPoolClassStats a, b;
    Held h;

    if (!have_idle_class()) {
        skip();
    }
    thread_pool_set_idle_limit_ms(20);
    thread_pool_class_stats(&a);
    held_start(&h, true);
    wait_started(&h);
    assert_int_equal(h.policy_start, SCHED_IDLE);
    /*
     * This thread, the submitter's, does not run its loop meanwhile: the
     * bound must hold while the loop thread is blocked (in the kernel, on
     * a lock the idle call holds), so it cannot be the loop's timer.
     */
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    do {
        g_usleep(1000);
        thread_pool_class_stats(&b);
    } while (b.promoted == a.promoted && g_get_monotonic_time() < end);
    assert_int_equal(b.promoted - a.promoted, 1);
    finish(&h);
    assert_int_equal(h.policy_end, SCHED_OTHER);
    thread_pool_set_idle_limit_ms(0);
}

/* ---- The copy engine: a job's offloads idle, a guest's copy not ---- */

#define LEN (8 * MiB)

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

static const JobDriver engine_job_driver = {
    .instance_size = sizeof(EngineJob),
    .job_type = JOB_TYPE_COMMIT,
    .run = engine_job_run,
};

static int job_ret;
static bool job_finished;

static void job_done(void *opaque, int ret)
{
    job_ret = ret;
    job_finished = true;
}

static BlockNode *open_cached(const char *p)
{
    return open_json(json_pack("{s:s, s:s}", "driver", "file", "filename",
                               p));
}

typedef struct Range {
    BlockCopyState *s;
    int ret;
} Range;

static void range_co(void *opaque)
{
    Range *r = opaque;
    bool is_read;
    r->ret = block_copy_range(r->s, 0, LEN, &is_read);
}

/* Copies src to dst as a job (job) or as a guest's range call; returns
 * the idle-class calls the pool ran meanwhile. */
static uint64_t engine_copy(bool job)
{
    uint8_t *data = g_malloc(LEN);
    g_autofree char *sp = NULL, *tp = NULL;
    ThreadPoolClassStats a, b;
    BlockCopyStats st;
    BlockNode *src, *dst;
    GError *err = NULL;

    fill_nonzero(data, LEN, 12);
    sp = make_file("src", data, LEN);
    tp = make_file("dst", NULL, LEN);
    src = open_cached(sp);
    dst = open_cached(tp);
    BlockCopyOptions o = {
        .granularity = 64 * KiB,
        .max_chunk = MiB,
        .use_copy_range = true,
        .write_behind = 2 * MiB,
        .classify = NULL,
    };
    thread_pool_class_stats(&a);
    if (job) {
        EngineJob *j = job_create("idle", &engine_job_driver, NULL,
                                  JOB_DEFAULT, job_done, NULL, &err);
        assert_non_null(j);
        o.source = job_add_node(&j->common, "source", src,
                                BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, &err);
        o.target = job_add_node(&j->common, "target", dst, BLK_PERM_WRITE,
                                BLK_PERM_ALL, &err);
        assert_non_null(o.source);
        assert_non_null(o.target);
        j->s = block_copy_new(&o, &err);
        assert_non_null(j->s);
        job_finished = false;
        job_ref(&j->common);
        job_start(&j->common);
        LOOP_WAIT_WHILE(!job_finished);
        assert_int_equal(job_ret, 0);
        block_copy_get_stats(j->s, &st);
        BlockCopyState *s = j->s;
        job_unref(&j->common);
        block_copy_free(s);
    } else {
        BlockBackend *bsrc, *bdst;
        o.source = edge(&bsrc, src, BLK_PERM_CONSISTENT_READ);
        o.target = edge(&bdst, dst, BLK_PERM_WRITE);
        BlockCopyState *s = block_copy_new(&o, &err);
        assert_non_null(s);
        Range r = { .s = s, .ret = -1 };
        co_run_sync(range_co, &r);
        assert_int_equal(r.ret, 0);
        block_copy_get_stats(s, &st);
        block_copy_free(s);
        blk_unref(bsrc);
        blk_unref(bdst);
    }
    thread_pool_class_stats(&b);
    node_unref(src);
    node_unref(dst);
    /* Offloaded, whole: the class changes when, not what. */
    assert_int_equal(st.bytes_offloaded, LEN);
    expect_file(tp, data, LEN);
    g_free(data);
    if (job) {
        assert_true(st.writeback_kicks > 0);
    }
    return b.idle_runs - a.idle_runs;
}

static void test_engine_job_idle_guest_not(void **state)
{
    if (!have_idle_class()) {
        skip();
    }
    /* Every offload and write-behind call of the job, none of the
     * guest's (a range call is what copy-before-write makes). */
    assert_true(engine_copy(true) >= 8);
    assert_int_equal(engine_copy(false), 0);
    /* The switch: off, the job's calls run at normal class. */
    thread_pool_set_idle_enabled(false);
    assert_int_equal(engine_copy(true), 0);
    thread_pool_set_idle_enabled(true);
}

/* ---- Simulated failures (thread_pool_set_sched_hook) ---- */

static gint starving;           /* a thread is held idle by starve_hook */
static gint starve_timed_out;
static gint starve_armed;       /* the next idle call starves */

/*
 * An idle thread on a machine whose normal threads keep every CPU busy:
 * it does not run until someone promotes it (10 s at most, then the test
 * has failed).
 */
static int starve_hook(pid_t tid, int policy, const struct sched_param *p)
{
    int ret = sched_setscheduler(tid, policy, p);

    if (ret == 0 && tid == 0 && policy == SCHED_IDLE &&
        g_atomic_int_compare_and_exchange(&starve_armed, 1, 0)) {
        gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
        g_atomic_int_set(&starving, 1);
        while (sched_getscheduler(0) == SCHED_IDLE) {
            if (g_get_monotonic_time() > end) {
                g_atomic_int_set(&starve_timed_out, 1);
                break;
            }
            g_usleep(500);
        }
        g_atomic_int_set(&starving, 0);
    }
    return ret;
}

static void wait_starving(void)
{
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (!g_atomic_int_get(&starving)) {
        if (g_get_monotonic_time() > end) {
            fail_msg("no background call went idle in 10 s");
        }
        loop_iterate(false);
        g_usleep(200);
    }
}

#define SER_LEN (256 * KiB)

typedef struct SerCopy {
    BlockChild *src, *dst;
    PoolBackground f;
    int ret;
    bool done;
} SerCopy;

/* A job's background copy into a fleecing target: serialising, offloaded. */
static void ser_copy_co(void *opaque)
{
    SerCopy *c = opaque;
    pool_background_begin(&c->f);
    c->ret = child_co_copy_range(c->src, 0, c->dst, 0, SER_LEN, 0,
                                 REQ_SERIALISING);
    pool_background_end(&c->f);
    c->done = true;
}

typedef struct SerRead {
    BlockChild *c;
    uint8_t buf[4096];
    int ret;
    bool done;
} SerRead;

static void ser_read_co(void *opaque)
{
    SerRead *r = opaque;
    r->ret = child_co_pread(r->c, 64 * KiB, sizeof(r->buf), r->buf, 0);
    r->done = true;
}

/*
 * A reader that waits in the request path (wait_serialising) for a
 * serialising copy whose copy_file_range runs idle and gets no CPU: the
 * wait promotes the copy, and ends without the watchdog (off here).
 */
static void test_serialising_wait_promotes(void **state)
{
    uint8_t *data = g_malloc(SER_LEN);
    g_autofree char *sp = NULL, *tp = NULL;
    ThreadPoolClassStats a, b;
    BlockBackend *bsrc, *bdst;
    SerCopy c = { .ret = -1 };
    SerRead r = { .ret = -1 };

    if (!have_idle_class()) {
        g_free(data);
        skip();
    }
    fill_nonzero(data, SER_LEN, 7);
    sp = make_file("ser-src", data, SER_LEN);
    tp = make_file("ser-dst", NULL, SER_LEN);
    BlockNode *src = open_cached(sp), *dst = open_cached(tp);
    c.src = edge(&bsrc, src, BLK_PERM_CONSISTENT_READ);
    c.dst = edge(&bdst, dst, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);
    r.c = c.dst;

    thread_pool_class_stats(&a);
    g_atomic_int_set(&starve_timed_out, 0);
    g_atomic_int_set(&starve_armed, 1);
    thread_pool_set_sched_hook(starve_hook);
    co_enter(co_create(ser_copy_co, &c));
    wait_starving();
    gint64 t0 = g_get_monotonic_time();
    co_enter(co_create(ser_read_co, &r));
    LOOP_WAIT_WHILE(!r.done);
    gint64 waited = g_get_monotonic_time() - t0;
    LOOP_WAIT_WHILE(!c.done);
    thread_pool_set_sched_hook(NULL);
    thread_pool_class_stats(&b);

    assert_false(g_atomic_int_get(&starve_timed_out));
    print_message("reader waited %" G_GINT64_FORMAT " us\n", waited);
    assert_true(waited < 5 * G_USEC_PER_SEC);
    assert_int_equal(c.ret, 0);
    assert_int_equal(r.ret, 0);
    /* It read after the copy: what the copy wrote. */
    assert_memory_equal(r.buf, data + 64 * KiB, sizeof(r.buf));
    assert_int_equal(b.promoted - a.promoted, 1);
    assert_int_equal(b.idle_runs - a.idle_runs, 1);

    blk_unref(bsrc);
    blk_unref(bdst);
    node_unref(src);
    node_unref(dst);
    expect_file(tp, data, SER_LEN);
    g_free(data);
}

/* ---- The stream's own copies idle, a guest's copy-on-read not ---- */

#define ST_LEN ((int64_t)(8 * MiB))

/* A qcow2 top over a qcow2 base full of byte; the top's node, opened. */
static BlockNode *open_stream_chain(const char *tag, int byte, char **tp)
{
    g_autofree char *bname = g_strdup_printf("%s-base.qcow2", tag);
    g_autofree char *tname = g_strdup_printf("%s-top.qcow2", tag);
    g_autofree char *bp = make_qcow2(bname, ST_LEN, NULL);
    BlockBackend *b = open_blk(bp);
    write_pattern(b, 0, ST_LEN, byte);
    blk_unref(b);
    *tp = make_qcow2(tname, ST_LEN, bp);
    return open_json(json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver", "qcow2",
                               "node-name", tag, "file", "driver", "file",
                               "filename", *tp));
}

static int64_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

typedef struct GuestIo {
    BlockBackend *blk;
    int64_t offset, bytes;
    bool write, in_frame, flush;
    uint8_t *buf;
    int ret;
    bool done;
} GuestIo;

static void guest_io_co(void *opaque)
{
    GuestIo *g = opaque;
    PoolBackground f;
    IOVec v;

    if (g->in_frame) {
        pool_background_begin(&f);
    }
    iovec_init_buf(&v, g->buf, (size_t)g->bytes);
    g->ret = g->flush ? blk_co_flush(g->blk) : g->write ? blk_co_pwritev(g->blk, g->offset, g->bytes, &v, 0)
                      : blk_co_preadv(g->blk, g->offset, g->bytes, &v, 0);
    iovec_destroy(&v);
    if (g->in_frame) {
        pool_background_end(&f);
    }
    g->done = true;
}

static void stream_and_wait(const char *id, BlockNode *top)
{
    StreamOptions o = { .bs = top, .on_error = BLOCKDEV_ON_ERROR_REPORT };
    GError *err = NULL;

    if (!stream_start(id, &o, &err)) {
        fail_msg("stream: %s", err->message);
    }
    LOOP_WAIT_WHILE(job_find(id));
}

/*
 * A stream makes no idle calls: its copies (REQ_PREFETCH reads through
 * its copy-on-read filter) write at normal class, through the file's
 * engine (idle writes bought the guest nothing and cost the job CPU:
 * docs/performance.md, "Guest writes during a stream: measures that can
 * decide").  A parent's read through the same kind of filter copies at
 * normal class too, even from a coroutine inside a background frame.
 */
static void test_stream_no_idle_calls(void **state)
{
    g_autofree char *tp = NULL, *tp2 = NULL;
    ThreadPoolClassStats a, b;

    if (!have_idle_class()) {
        skip();
    }
    BlockNode *top = open_stream_chain("stidle", 0x5a, &tp);
    BlockBackend *guest = backend_on(top, BLK_PERM_CONSISTENT_READ |
                                     BLK_PERM_WRITE);
    thread_pool_class_stats(&a);
    stream_and_wait("stidle-job", top);
    thread_pool_class_stats(&b);
    print_message("stream: %" PRIu64 " idle calls\n",
                  b.idle_runs - a.idle_runs);
    assert_int_equal(b.idle_runs - a.idle_runs, 0);
    check_pattern(guest, 0, ST_LEN, 0x5a);
    assert_true(file_size(tp) >= ST_LEN);
    blk_unref(guest);
    node_unref(top);

    /* A guest's reads through a filter: copied, at normal class. */
    BlockNode *top2 = open_stream_chain("stguest", 0x6b, &tp2);
    BlockBackend *rd = backend_on(open_json(json_pack(
        "{s:s, s:s}", "driver", "copy-on-read", "file", "stguest")),
        BLK_PERM_CONSISTENT_READ);
    GuestIo g = { .blk = rd, .bytes = ST_LEN, .in_frame = true,
                  .buf = g_malloc(ST_LEN), .ret = -1 };
    thread_pool_class_stats(&a);
    co_run_sync(guest_io_co, &g);
    thread_pool_class_stats(&b);
    assert_int_equal(g.ret, 0);
    for (size_t i = 0; i < ST_LEN; i++) {
        if (g.buf[i] != 0x6b) {
            fail_msg("byte %zu read 0x%02x", i, g.buf[i]);
        }
    }
    assert_true(file_size(tp2) >= ST_LEN);
    assert_int_equal(b.idle_runs - a.idle_runs, 0);
    BlockNode *cor = blk_node(rd);
    blk_unref(rd);
    node_unref(cor);
    node_unref(top2);
    g_free(g.buf);
}

/* A lost right: a worker at SCHED_IDLE cannot go back to normal class. */
static int deny_leave_hook(pid_t tid, int policy, const struct sched_param *p)
{
    if (policy != SCHED_IDLE && sched_getscheduler(tid) == SCHED_IDLE) {
        errno = EPERM;
        return -1;
    }
    return sched_setscheduler(tid, policy, p);
}

typedef struct WhoRan {
    pid_t tid;
    int policy;
} WhoRan;

static int who_fn(void *opaque)
{
    WhoRan *w = opaque;
    w->tid = (pid_t)syscall(SYS_gettid);
    w->policy = sched_getscheduler(0);
    return 0;
}

typedef struct StuckRun {
    WhoRan first, later_bg[4], later[4];
    int ret;
    bool after;             /* the runs after the failure */
} StuckRun;

static void stuck_co(void *opaque)
{
    StuckRun *s = opaque;
    PoolBackground f;

    pool_background_begin(&f);
    if (!s->after) {
        s->ret = thread_pool_co_run_background(who_fn, &s->first);
    } else {
        for (int i = 0; i < 4; i++) {
            s->ret |= thread_pool_co_run_background(who_fn, &s->later_bg[i]);
            s->ret |= thread_pool_co_run(who_fn, &s->later[i]);
        }
    }
    pool_background_end(&f);
}

/* The state letter of thread tid (/proc/self/task/TID/stat). */
static char thread_state(pid_t tid)
{
    g_autofree char *path = g_strdup_printf("/proc/self/task/%d/stat",
                                            (int)tid);
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return '?';
    }
    const char *end = strrchr(text, ')');
    return end && end[1] == ' ' ? end[2] : '?';
}

/*
 * The right to leave SCHED_IDLE goes after the start-up probe: the worker
 * that finds out after its call gets its completion posted by the
 * watchdog and parks, never to run anything again; every later call runs
 * on other workers, at normal class, and the idle class is off.
 */
static void test_stuck_worker(void **state)
{
    ThreadPoolClassStats a, b;
    StuckRun s = { .ret = -1 };

    if (!have_idle_class()) {
        skip();
    }
    thread_pool_set_max(1);
    thread_pool_class_stats(&a);
    thread_pool_set_sched_hook(deny_leave_hook);
    co_run_sync(stuck_co, &s);
    thread_pool_set_sched_hook(NULL);
    thread_pool_class_stats(&b);
    assert_int_equal(s.ret, 0);
    assert_int_equal(s.first.policy, SCHED_IDLE);
    assert_int_equal(b.stuck - a.stuck, 1);
    assert_false(thread_pool_idle_enabled());

    /* Even with one worker allowed, a new one does the pool's work. */
    s.after = true;
    s.ret = 0;
    co_run_sync(stuck_co, &s);
    thread_pool_set_max(64);
    assert_int_equal(s.ret, 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(s.later_bg[i].policy, SCHED_OTHER);
        assert_int_equal(s.later[i].policy, SCHED_OTHER);
        assert_int_not_equal(s.later_bg[i].tid, s.first.tid);
        assert_int_not_equal(s.later[i].tid, s.first.tid);
    }
    /*
     * Still idle, asleep for good once it has got a CPU for the last few
     * instructions after its hand-over (runnable until then, maybe for a
     * while on a busy machine): it holds nothing and runs nothing.
     */
    assert_int_equal(sched_getscheduler(s.first.tid), SCHED_IDLE);
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (thread_state(s.first.tid) == 'R' &&
           g_get_monotonic_time() < end) {
        g_usleep(1000);
    }
    assert_int_equal(thread_state(s.first.tid), 'S');
    thread_pool_set_idle_enabled(true);
}

/* ---- Priority inheritance of CoMutex, without I/O ---- */

typedef struct LockCo {
    CoMutex *m;
    bool frame, locked, release, done;
    PoolBackground f;
    Coroutine *co;
} LockCo;

static void lock_co(void *opaque)
{
    LockCo *l = opaque;
    l->co = co_self();
    if (l->frame) {
        pool_background_begin(&l->f);
    }
    co_mutex_lock(l->m);
    l->locked = true;
    while (!l->release) {
        co_sleep_ns(100000);
    }
    co_mutex_unlock(l->m);
    if (l->frame) {
        pool_background_end(&l->f);
    }
    l->done = true;
}

static void lock_start(LockCo *l)
{
    co_enter(co_create(lock_co, l));
    for (int i = 0; i < 10; i++) {
        loop_iterate(false);
    }
}

/*
 * A background holder A; a background waiter C promotes nobody, until C
 * itself is promoted (then A is); a guest waiter B promotes A at once;
 * the hand-over to C with B still queued promotes C.
 */
static void test_co_mutex_inheritance(void **state)
{
    CoMutex m;
    co_mutex_init(&m);
    LockCo a = { .m = &m, .frame = true }, c = { .m = &m, .frame = true };
    LockCo a2 = { .m = &m, .frame = true }, c2 = { .m = &m, .frame = true };
    LockCo b = { .m = &m };

    lock_start(&a);
    assert_true(a.locked);
    lock_start(&c);
    assert_false(c.locked);
    assert_false(atomic_load(&a.f.promoted));
    pool_background_promote_co(c.co);
    assert_true(atomic_load(&c.f.promoted));
    assert_true(atomic_load(&a.f.promoted));       /* through C's wait */
    a.release = c.release = true;
    LOOP_WAIT_WHILE(!a.done || !c.done);

    lock_start(&a2);
    lock_start(&c2);
    lock_start(&b);
    assert_true(atomic_load(&a2.f.promoted));      /* B's wait */
    assert_false(atomic_load(&c2.f.promoted));
    a2.release = true;
    LOOP_WAIT_WHILE(!a2.done || !c2.locked);
    assert_true(c2.locked);
    assert_true(atomic_load(&c2.f.promoted));      /* B still behind it */
    c2.release = b.release = true;
    LOOP_WAIT_WHILE(!c2.done || !b.done);
    assert_int_equal(m.urgent, 0);
    assert_false(m.locked);
}

/* ---- Priority inheritance through qcow2's s->lock ---- */

/*
 * A worker that goes idle "starves" (no CPU) until someone promotes it,
 * for at most STARVE_MAX_US: the watchdog is off, so only a promotion
 * (or the test) ends an episode early.
 */
#define STARVE_MAX_US (10 * G_USEC_PER_SEC)
static gint lockinv_starving, lockinv_timed_out, lockinv_episodes;
static _Atomic pid_t lockinv_tid;

static int lockinv_hook(pid_t tid, int policy, const struct sched_param *p)
{
    int ret = sched_setscheduler(tid, policy, p);
    if (ret == 0 && tid == 0 && policy == SCHED_IDLE) {
        gint64 end = g_get_monotonic_time() + STARVE_MAX_US;
        atomic_store(&lockinv_tid, (pid_t)syscall(SYS_gettid));
        g_atomic_int_inc(&lockinv_episodes);
        g_atomic_int_set(&lockinv_starving, 1);
        while (sched_getscheduler(0) == SCHED_IDLE) {
            if (g_get_monotonic_time() > end) {
                g_atomic_int_inc(&lockinv_timed_out);
                break;
            }
            g_usleep(500);
        }
        g_atomic_int_set(&lockinv_starving, 0);
    }
    return ret;
}

typedef struct Prefetch {
    BlockChild *c;
    PoolBackground f;
    Coroutine *co;
    int ret;
    bool done;
} Prefetch;

/*
 * A copy whose file writes run idle: a REQ_PREFETCH read through the
 * filter in a frame, with the frame's writes opened to the idle class
 * (pool_background_writes_begin, what the stream's copies did until the
 * filter stopped asking): its qcow2 metadata writes under s->lock and its
 * data write under an allocation claim then starve with the lock or the
 * claim held.
 */
static void prefetch_co(void *opaque)
{
    Prefetch *p = opaque;
    p->co = co_self();
    pool_background_begin(&p->f);
    bool open = pool_background_writes_begin();
    assert_true(open);
    p->ret = child_co_preadv(p->c, 0, 64 * KiB, NULL, 0, REQ_PREFETCH);
    pool_background_writes_end();
    pool_background_end(&p->f);
    p->done = true;
}

/*
 * While the copy's qcow2 metadata write starves at idle class holding
 * the top's s->lock, a guest read through the filter (block status under
 * s->lock) or a guest flush (the caches, under s->lock) waits for that
 * lock without entering the filter's serialisation: it must promote the
 * holder (util/co-lock.c), not wait for the starving call.  Episodes
 * where the copy does not hold the lock are ended by the test itself
 * (the worker set back to normal class, the frame left unpromoted).
 */
typedef enum { INV_READ, INV_FLUSH, INV_CLAIM } InvMode;

static void lock_inversion(const char *tag, InvMode mode)
{
    g_autofree char *tp = NULL;
    BlockNode *top = open_stream_chain(tag, 0x11, &tp);
    BlockNode *base = node_backing(top);
    Qcow2State *qs = top->opaque;
    BlockNode *cor = open_json(json_pack("{s:s, s:s, s:s}", "driver",
        "copy-on-read", "file", tag, "bottom", node_get_name(base)));
    BlockBackend *bpref, *guest = mode == INV_CLAIM
        ? backend_on(top, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)
        : backend_on(cor, BLK_PERM_CONSISTENT_READ);
    Prefetch p = { .c = edge(&bpref, cor, BLK_PERM_CONSISTENT_READ),
                   .ret = -1 };
    uint8_t *buf = g_malloc(4096);
    bool tried = false;
    ThreadPoolClassStats a, b;

    lockinv_timed_out = lockinv_episodes = 0;
    thread_pool_set_sched_hook(lockinv_hook);
    co_enter(co_create(prefetch_co, &p));
    while (!p.done) {
        while (!g_atomic_int_get(&lockinv_starving) && !p.done) {
            loop_iterate(false);
            g_usleep(200);
        }
        if (p.done) {
            break;
        }
        int n = g_atomic_int_get(&lockinv_episodes);
        bool locked = qs->lock.locked && qs->lock.holder == p.co;
        /* Only the copy runs: a claim in flight is its data write's. */
        bool ready = mode == INV_CLAIM ? !locked && qs->inflight : locked;
        if (!tried && ready) {
            GuestIo g = { .blk = guest, .bytes = 4096, .buf = buf, .ret = -1,
                          .offset = mode == INV_CLAIM ? 0 : 4 * MiB,
                          .write = mode == INV_CLAIM,
                          .flush = mode == INV_FLUSH };
            tried = true;
            thread_pool_class_stats(&a);
            co_enter(co_create(guest_io_co, &g));
            LOOP_WAIT_WHILE(!g.done);
            thread_pool_class_stats(&b);
            assert_int_equal(g.ret, 0);
            /* Not ended by the hook's time limit, but by a promotion. */
            assert_int_equal(g_atomic_int_get(&lockinv_timed_out), 0);
            assert_true(b.promoted > a.promoted);
            assert_true(atomic_load(&p.f.promoted));
        } else {
            struct sched_param sp = { 0 };
            sched_setscheduler(atomic_load(&lockinv_tid), SCHED_OTHER, &sp);
        }
        while (g_atomic_int_get(&lockinv_starving) &&
               g_atomic_int_get(&lockinv_episodes) == n) {
            loop_iterate(false);
            g_usleep(200);
        }
    }
    LOOP_WAIT_WHILE(!p.done);
    thread_pool_set_sched_hook(NULL);
    assert_int_equal(p.ret, 0);
    /* The copy's writes under s->lock did run idle and were caught. */
    assert_true(tried);
    assert_int_equal(g_atomic_int_get(&lockinv_timed_out), 0);
    blk_unref(guest);
    blk_unref(bpref);
    node_unref(cor);
    node_unref(top);
    g_free(buf);
}

static void test_lock_inversion_read(void **state)
{
    if (!have_idle_class()) {
        skip();
    }
    lock_inversion("lockinv-r", INV_READ);
}

static void test_lock_inversion_flush(void **state)
{
    if (!have_idle_class()) {
        skip();
    }
    lock_inversion("lockinv-f", INV_FLUSH);
}

/*
 * Another parent of the top writing into the clusters that the copy
 * allocates: it waits for qcow2's claim on them, not for s->lock, while
 * the copy's data write starves; qcow2 promotes the claim's owner.
 */
static void test_claim_inversion_write(void **state)
{
    if (!have_idle_class()) {
        skip();
    }
    lock_inversion("lockinv-w", INV_CLAIM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_which_calls_idle),
        cmocka_unit_test(test_promote_running),
        cmocka_unit_test(test_normal_not_behind_background),
        cmocka_unit_test(test_overdue),
        cmocka_unit_test(test_engine_job_idle_guest_not),
        cmocka_unit_test(test_serialising_wait_promotes),
        cmocka_unit_test(test_stream_no_idle_calls),
        cmocka_unit_test(test_co_mutex_inheritance),
        cmocka_unit_test(test_lock_inversion_read),
        cmocka_unit_test(test_lock_inversion_flush),
        cmocka_unit_test(test_claim_inversion_write),
        /* Last: it leaves a parked worker behind. */
        cmocka_unit_test(test_stuck_worker),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
