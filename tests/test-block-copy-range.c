/*
 * The copy engine's copy-before-write ranges (block_copy_range, what a
 * guest write through the filter asks for) against its background copy
 * (block_copy_run), on raw files and null-co nodes: ranges racing the
 * background copy copy every granule once and leave the old data on the
 * target, a range waits for a chunk of it in flight, wait_range, a range
 * gets through while the background holds every worker and its whole
 * budget, and the background makes way after a range.  Chunks are held
 * at gates (order of events, never timing).  The rest of the engine:
 * test-block-copy.c; with a job: test-block-copy-job.c.
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

/* ---- Copy-before-write ranges racing the background copy ---- */

typedef struct Guest {
    BlockCopyState *s;
    BlockChild *src_w, *dst_r;
    int64_t offset, bytes;
    const uint8_t *orig;     /* the source before any guest write */
    int ret;
    bool done;
} Guest;

/* A guest write: copy the old data first, check it is there, then write. */
static void guest_co(void *opaque)
{
    Guest *g = opaque;
    bool is_read;
    g->ret = block_copy_range(g->s, g->offset, g->bytes, &is_read);
    if (g->ret == 0) {
        uint8_t *buf = g_malloc(g->bytes);
        /* No cmocka assertion here: it cannot unwind a coroutine. */
        g->ret = child_co_pread(g->dst_r, g->offset, g->bytes, buf, 0);
        if (g->ret == 0 && memcmp(buf, g->orig + g->offset, g->bytes)) {
            g->ret = -EBADMSG;      /* the old data is not on the target */
        }
        memset(buf, 0xee, g->bytes);
        if (g->ret == 0) {
            g->ret = child_co_pwrite(g->src_w, g->offset, g->bytes, buf, 0);
        }
        g_free(buf);
    }
    g->done = true;
}

static void test_range_concurrent(void **state)
{
    const size_t len = 4 * MiB;
    enum { NG = 12 };
    uint8_t *data = g_malloc(len);
    fill_nonzero(data, len, 10);
    g_autofree char *sp = make_file("csrc", data, len);
    g_autofree char *tp = make_file("cdst", NULL, len);
    BlockNode *src = open_file(sp), *dst = open_file(tp);
    BlockBackend *wblk, *rblk;
    Edges e;
    Seen seen = { .granules = len / GRAN };
    seen.per_granule = g_new0(int, seen.granules);
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .max_workers = 4,
        .progress = on_progress, .progress_opaque = &seen,
    };
    BlockCopyState *s = new_copy(&o);
    BlockChild *src_w = edge(&wblk, src, BLK_PERM_WRITE);
    BlockChild *dst_r = edge(&rblk, dst, BLK_PERM_CONSISTENT_READ);
    Guest g[NG];
    Run bg = { .s = s };
    BlockCopyStats st;

    /* Writes all over the disk, overlapping each other and unaligned. */
    for (int i = 0; i < NG; i++) {
        g[i] = (Guest) {
            .s = s, .src_w = src_w, .dst_r = dst_r, .orig = data,
            .offset = (int64_t)((i * 7 + 3) % NG) * (len / NG) + i * 1000,
            .bytes = 100 * KiB + i * 4096,
        };
        g[i].bytes = MIN(g[i].bytes, (int64_t)len - g[i].offset);
    }
    co_enter(co_create(run_co, &bg));
    for (int i = 0; i < NG; i++) {
        co_enter(co_create(guest_co, &g[i]));
        /* Some start right away, some after the copy has moved on. */
        if (i % 3 == 2) {
            loop_iterate(false);
        }
    }
    for (int i = 0; i < NG; i++) {
        LOOP_WAIT_WHILE(!g[i].done);
        assert_int_equal(g[i].ret, 0);
    }
    LOOP_WAIT_WHILE(!bg.done);
    assert_int_equal(bg.ret, 0);
    /* A guest write after the copy needs nothing. */
    g[0].done = false;
    co_run_sync(guest_co, &g[0]);
    assert_int_equal(g[0].ret, 0);

    for (int64_t i = 0; i < seen.granules; i++) {
        assert_int_equal(seen.per_granule[i], 1);
    }
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_read, len);
    assert_int_equal(st.bytes_written, len);
    blk_unref(wblk);
    blk_unref(rblk);
    copy_close(s, &e, src, dst);
    /* The target is the source as it was before any guest write. */
    expect_file(tp, data, len);
    g_free(data);
    g_free(seen.per_granule);
}

/* A range whose chunk the background copy holds waits for that chunk. */
static void test_range_waits_for_inflight(void **state)
{
    const size_t len = MiB;
    uint8_t *data = g_malloc(len);
    fill_nonzero(data, len, 12);
    g_autofree char *sp = make_file("wsrc", data, len);
    g_autofree char *tp = make_file("wdst", NULL, len);
    BlockNode *src = open_file(sp), *dst = open_file(tp);
    BlockBackend *wblk, *rblk;
    Edges e;
    Gate gate;
    gate_init(&gate, 0);
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .max_workers = 2,
        .classify = gated_classify, .classify_opaque = &gate,
    };
    BlockCopyState *s = new_copy(&o);
    Run bg = { .s = s };
    Guest g = {
        .s = s, .src_w = edge(&wblk, src, BLK_PERM_WRITE),
        .dst_r = edge(&rblk, dst, BLK_PERM_CONSISTENT_READ), .orig = data,
        .offset = 1000, .bytes = 3000,
    };

    co_enter(co_create(run_co, &bg));
    /* The background copy took granule 0 and classifies it. */
    assert_int_equal(block_copy_in_flight(s), 1);
    assert_false(dirty_bitmap_get(block_copy_bitmap(s), 0));
    co_enter(co_create(guest_co, &g));
    for (int i = 0; i < 20; i++) {
        loop_iterate(false);
    }
    /* Held up by the chunk in flight, which is held at the gate. */
    assert_false(g.done);
    assert_int_equal(gate.waiting, 1);
    gate_open(&gate);
    LOOP_WAIT_WHILE(!g.done);
    assert_int_equal(g.ret, 0);
    LOOP_WAIT_WHILE(!bg.done);
    assert_int_equal(bg.ret, 0);
    blk_unref(wblk);
    blk_unref(rblk);
    copy_close(s, &e, src, dst);
    expect_file(tp, data, len);
    g_free(data);
}

/* wait_range returns only when no chunk overlapping it is in flight. */
typedef struct Waiter {
    BlockCopyState *s;
    int64_t offset, bytes;
    int in_flight_after;
    bool done;
} Waiter;

static void waiter_co(void *opaque)
{
    Waiter *w = opaque;
    block_copy_wait_range(w->s, w->offset, w->bytes);
    w->in_flight_after = block_copy_in_flight(w->s);
    w->done = true;
}

static void test_wait_range(void **state)
{
    const int64_t len = 4 * MiB;
    BlockNode *src = open_null(len, 2000000), *dst = open_null(len, 0);
    Edges e;
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .max_workers = 1,
    };
    BlockCopyState *s = new_copy(&o);
    Run bg = { .s = s };
    Waiter w = { .s = s, .offset = 1000, .bytes = 10 };

    co_enter(co_create(run_co, &bg));
    /* The first chunk (granule 0) waits in its read. */
    assert_int_equal(block_copy_in_flight(s), 1);
    co_enter(co_create(waiter_co, &w));
    assert_false(w.done);
    LOOP_WAIT_WHILE(!w.done);
    /* Granule 0 finished; the next chunk may be in flight, elsewhere. */
    assert_false(dirty_bitmap_get(block_copy_bitmap(s), 0));
    LOOP_WAIT_WHILE(!bg.done);
    assert_int_equal(bg.ret, 0);
    /* Nothing in flight: returns at once. */
    w.done = false;
    co_run_sync(waiter_co, &w);
    assert_true(w.done);
    copy_close(s, &e, src, dst);
}

/* ---- Range calls against a busy background ---- */

/*
 * Target writes below pass_from wait here until the test lets them go
 * (release: those waiting now; open: all from then on): background
 * chunks that hold their worker and their buffer for as long as the
 * test wants, no timing.
 */
typedef struct WriteGate {
    BlockChild *target;
    int64_t pass_from;
    bool open;
    unsigned gen;            /* release() lets this generation through */
    int waiting;
    int64_t passed_at_or_above;   /* bytes written from pass_from on */
    CoQueue q;
} WriteGate;

static int coroutine_fn gated_write(void *opaque, int64_t offset,
                                    int64_t bytes, void *buf)
{
    WriteGate *g = opaque;
    unsigned gen = g->gen;

    if (offset >= g->pass_from) {
        g->passed_at_or_above += bytes;
    }
    while (!g->open && offset < g->pass_from && g->gen == gen) {
        g->waiting++;
        co_queue_wait(&g->q);
        g->waiting--;
    }
    return child_co_pwrite(g->target, offset, bytes, buf, 0);
}

static void wgate_release(WriteGate *g)
{
    g->gen++;
    co_queue_restart_all(&g->q);
}

/*
 * Run what is ready until nothing is: null-co without latency completes
 * in the request, so only wake-ups are left, and they end.
 */
static void settle(void)
{
    for (int i = 0; i < 100000 && loop_iterate(false); i++) {
    }
}

/*
 * Every background worker and the whole background budget are held by
 * chunks whose target writes cannot finish: a copy-before-write range
 * for a cluster not copied yet still completes (it used to wait for a
 * worker slot behind the background, for as long as the whole copy).
 */
static void test_range_not_behind_background(void **state)
{
    const int64_t len = 4 * MiB;
    BlockNode *src = open_null(len, 0), *dst = open_null(len, 0);
    Edges e;
    Seen seen = { .granules = len / GRAN };
    seen.per_granule = g_new0(int, seen.granules);
    WriteGate wg = { .pass_from = 2 * MiB };
    co_queue_init(&wg.q);
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .max_chunk = GRAN,
        .max_memory = 2 * GRAN,
        .max_workers = 2,
        .classify = all_data,
        .write = gated_write, .write_opaque = &wg,
        .progress = on_progress, .progress_opaque = &seen,
    };
    wg.target = o.target;
    BlockCopyState *s = new_copy(&o);
    Run bg = { .s = s };
    Run r = { .s = s, .offset = 2 * MiB + 1000, .bytes = 4096 };
    BlockCopyStats st;

    co_enter(co_create(run_co, &bg));
    settle();
    assert_int_equal(wg.waiting, 2);
    assert_int_equal(block_copy_in_flight(s), 2);
    block_copy_get_stats(s, &st);
    assert_int_equal(st.peak_memory, 2 * GRAN);

    co_enter(co_create(range_co, &r));
    settle();
    assert_true(r.done);
    assert_int_equal(r.ret, 0);
    /* The one cluster the write touches, copied, past the budget. */
    assert_int_equal(wg.passed_at_or_above, GRAN);
    assert_false(dirty_bitmap_get(block_copy_bitmap(s), 2 * MiB));
    assert_true(dirty_bitmap_get(block_copy_bitmap(s), 2 * MiB + GRAN));
    block_copy_get_stats(s, &st);
    assert_int_equal(st.peak_memory, 3 * GRAN);
    /* The background is still held. */
    assert_int_equal(block_copy_in_flight(s), 2);
    assert_false(bg.done);

    /* A range with nothing left to copy returns without waiting. */
    r.done = false;
    co_enter(co_create(range_co, &r));
    assert_true(r.done);
    assert_int_equal(r.ret, 0);

    wg.open = true;
    wgate_release(&wg);
    LOOP_WAIT_WHILE(!bg.done);
    assert_int_equal(bg.ret, 0);
    for (int64_t i = 0; i < seen.granules; i++) {
        assert_int_equal(seen.per_granule[i], 1);
    }
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_written, len);
    assert_true(st.peak_memory <= 2 * GRAN + BLOCK_COPY_URGENT_MEMORY);
    copy_close(s, &e, src, dst);
    g_free(seen.per_granule);
}

/*
 * After a range call the background keeps few tasks in flight and fewer
 * writes (what a guest write's copy queues behind), then goes back to
 * its workers.
 */
static void test_background_makes_way(void **state)
{
    const int64_t len = 32 * MiB;
    BlockNode *src = open_null(len, 0), *dst = open_null(len, 0);
    Edges e;
    WriteGate wg = { .pass_from = len };   /* every write waits */
    co_queue_init(&wg.q);
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .max_chunk = GRAN,
        .max_workers = 16,
        .classify = all_data,
        .write = gated_write, .write_opaque = &wg,
    };
    wg.target = o.target;
    BlockCopyState *s = new_copy(&o);
    Run bg = { .s = s };
    Run r = { .s = s, .offset = 24 * MiB, .bytes = 4096 };

    co_enter(co_create(run_co, &bg));
    settle();
    /* No range call yet: every worker writes. */
    assert_int_equal(wg.waiting, 16);

    co_enter(co_create(range_co, &r));
    settle();
    assert_int_equal(wg.waiting, 17);
    assert_false(r.done);
    /* Let the 17 writes go; the writes that come next wait again. */
    wgate_release(&wg);
    settle();
    assert_true(r.done);
    assert_int_equal(r.ret, 0);
    assert_int_equal(block_copy_in_flight(s), BLOCK_COPY_POLITE_TASKS);
    assert_int_equal(wg.waiting, BLOCK_COPY_POLITE_WRITES);

    /*
     * Polite for BLOCK_COPY_POLITE_CHUNKS background tasks from the range
     * call on (the 16 that were in flight count), then all workers again.
     */
    for (;;) {
        BlockCopyStats st;
        block_copy_get_stats(s, &st);
        if (st.chunks - 1 >= BLOCK_COPY_POLITE_CHUNKS) {
            break;
        }
        assert_true(block_copy_in_flight(s) <= BLOCK_COPY_POLITE_TASKS);
        assert_true(wg.waiting <= BLOCK_COPY_POLITE_WRITES);
        wgate_release(&wg);
        settle();
    }
    assert_int_equal(wg.waiting, 16);
    assert_int_equal(block_copy_in_flight(s), 16);

    wg.open = true;
    wgate_release(&wg);
    LOOP_WAIT_WHILE(!bg.done);
    assert_int_equal(bg.ret, 0);
    assert_int_equal(block_copy_remaining(s), 0);
    copy_close(s, &e, src, dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_range_concurrent),
        cmocka_unit_test(test_range_waits_for_inflight),
        cmocka_unit_test(test_wait_range),
        cmocka_unit_test(test_range_not_behind_background),
        cmocka_unit_test(test_background_makes_way),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
