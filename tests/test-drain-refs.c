/*
 * What a coroutine keeps across a drain.  A drain begun or ended in a
 * coroutine runs from a BH while the coroutine waits (block/drain.c), so
 * whatever the loop has queued runs first: a job's completion, another
 * client's command.  These tests queue such work on purpose and check that
 * nothing the drain or the job layer relies on goes away meanwhile.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <string.h>
#include <cmocka.h>
#include "strata/block-driver.h"
#include "strata/coroutine.h"
#include "strata/iothread.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "strata/mirror.h"
#include "strata/units.h"
#include "support.h"
#include "../jobs/discard-source.h"

/* Named apart per test: a failed test leaves its nodes behind. */
static BlockNode *open_named(const char *name)
{
    static int serial;
    g_autofree char *unique = g_strdup_printf("%s%d", name, serial++);
    return open_json(json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver", "raw",
                               "node-name", unique, "file", "driver",
                               "null-co", "size", "1M"));
}

/* ---- The node a coroutine drains loses its last other reference ---- */

/* A parent that is neither node nor backend, counting its drains. */
static int watcher_drained;

static void watcher_drained_begin(BlockChild *c)
{
    watcher_drained++;
}

static void watcher_drained_end(BlockChild *c)
{
    watcher_drained--;
}

static char *watcher_desc(BlockChild *c)
{
    return g_strdup("drain watcher");
}

static const BlockChildClass watcher_class = {
    .kind = "job",
    .get_parent_desc = watcher_desc,
    .drained_begin = watcher_drained_begin,
    .drained_end = watcher_drained_end,
};

static void unref_bh(void *opaque)
{
    node_unref(opaque);
}

typedef struct {
    BlockNode *bs;
    char name[64];
    bool found_while_drained;
    int drained_while_drained;
    bool done;
} DropRace;

static void coroutine_fn drop_race_co(void *opaque)
{
    DropRace *r = opaque;
    /*
     * Queued before the drain's BH, as a job's completion that drops the
     * node would be: it runs while this coroutine waits for the drain.
     */
    loop_bh(unref_bh, r->bs);
    node_drain_begin(r->bs);
    r->found_while_drained = node_find(r->name) == r->bs;
    r->drained_while_drained = watcher_drained;
    node_drain_end(r->bs);
    r->done = true;
}

/*
 * The caller's only reference goes while its drain's BH is queued: the
 * drain must begin on the live node (and hold it until its end), not on
 * freed memory.  The watcher sits on the node's file child, which the
 * drain reaches only through the node.
 */
static void test_begin_keeps_node(void **state)
{
    GError *err = NULL;
    BlockNode *bs = open_named("drop");
    BlockNode *file = child_node(node_find_child(bs, "file"));
    node_ref(file);
    BlockChild *w = child_attach(file, "watcher", &watcher_class, 0, 0,
                                 BLK_PERM_ALL, NULL, &err);
    assert_non_null(w);
    DropRace r = { .bs = bs };
    g_strlcpy(r.name, node_get_name(bs), sizeof(r.name));

    watcher_drained = 0;
    co_enter(co_create(drop_race_co, &r));
    LOOP_WAIT_WHILE(!r.done);

    assert_true(r.found_while_drained);
    assert_int_equal(r.drained_while_drained, 1);
    assert_int_equal(watcher_drained, 0);
    /* Gone with the drain's end: nothing else held it. */
    assert_null(node_find(r.name));
    assert_true(child_detach(w, &err));
    node_unref(file);
}

/* ---- Two finalizes of one transaction at once ---- */

typedef struct FJob {
    Job common;
    BlockNode *bs;
    int prepares, commits, cleans;
} FJob;

static int coroutine_fn fj_run(Job *job, GError **errp)
{
    return 0;
}

/* Drains as commit's and stream's prepare do (a reopen, a graph change). */
static int fj_prepare(Job *job)
{
    FJob *f = (FJob *)job;
    f->prepares++;
    node_drain_begin(f->bs);
    node_drain_end(f->bs);
    return 0;
}

static void fj_commit(Job *job)
{
    ((FJob *)job)->commits++;
}

static void fj_clean(Job *job)
{
    ((FJob *)job)->cleans++;
}

static const JobDriver fj_driver = {
    .instance_size = sizeof(FJob),
    .job_type = JOB_TYPE_COMMIT,
    .run = fj_run,
    .prepare = fj_prepare,
    .commit = fj_commit,
    .clean = fj_clean,
};

typedef struct {
    Job *job;
    bool ok, done;
    GError *err;
} Finalize;

static void coroutine_fn finalize_co(void *opaque)
{
    Finalize *f = opaque;
    f->ok = job_finalize(f->job, &f->err);
    f->done = true;
}

/*
 * A job-finalize from one client while another client's job-finalize of
 * the same transaction waits in a prepare's drain: the transaction is
 * prepared and committed once, and the second command has nothing left to
 * do (as a cancel there, it leaves the completion alone).  Before, the
 * second ran prepare again and then finalized a job already dismissed.
 */
static void test_finalize_twice(void **state)
{
    GError *err = NULL;
    BlockNode *bs = open_named("fin");
    FJob *f = job_create("fin", &fj_driver, NULL,
                         JOB_MANUAL_FINALIZE | JOB_MANUAL_DISMISS, NULL, NULL,
                         &err);
    assert_non_null(f);
    f->bs = bs;
    job_ref(&f->common);
    job_start(&f->common);
    LOOP_WAIT_WHILE(f->common.status != JOB_STATUS_PENDING);

    Finalize a = { .job = &f->common }, b = { .job = &f->common };
    co_enter(co_create(finalize_co, &a));
    /* a waits in its prepare's drain now */
    assert_false(a.done);
    assert_int_equal(f->prepares, 1);
    co_enter(co_create(finalize_co, &b));
    LOOP_WAIT_WHILE(!a.done || !b.done);

    assert_true(a.ok);
    assert_true(b.ok);
    assert_int_equal(f->prepares, 1);
    assert_int_equal(f->commits, 1);
    assert_int_equal(f->cleans, 1);
    assert_int_equal(f->common.status, JOB_STATUS_CONCLUDED);
    assert_true(job_dismiss(&f->common, &err));
    job_unref(&f->common);
    node_unref(bs);
}

/* ---- Active commit: the top goes while the base is reopened ---- */

typedef struct {
    BlockNode *top, *base;
    BlockJob *job;
    bool done;
} ActiveStart;

static void coroutine_fn active_start_co(void *opaque)
{
    ActiveStart *a = opaque;
    GError *err = NULL;
    /* Another client's blockdev-del of the top: it runs in the drain of
     * the base's reopen (read-only base: made writable first). */
    loop_bh(unref_bh, a->top);
    a->job = commit_active_start("ac", a->top, a->base, JOB_DEFAULT, 0,
                                 BLOCKDEV_ON_ERROR_REPORT, NULL, NULL, &err);
    if (err) {
        print_message("commit_active_start: %s\n", err->message);
    }
    g_clear_error(&err);
    a->done = true;
}

/*
 * block-commit of an active layer reopens a read-only base before the job
 * holds anything: the top must not be used after that reopen's drains
 * unless something still holds it.  Before, the job was set up on the
 * freed top (a read of freed memory: "A block device must be specified
 * for "backing"", or a crash).
 */
static void test_active_commit_top_gone(void **state)
{
    g_autofree char *bp = make_qcow2("ac-base.qcow2", MiB, NULL);
    g_autofree char *tp = make_qcow2("ac-top.qcow2", MiB, bp);
    ActiveStart a = { 0 };
    a.top = open_json(json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver",
                                "qcow2", "node-name", "actop", "file",
                                "driver", "file", "filename", tp));
    a.base = node_backing(a.top);
    assert_non_null(a.base);
    assert_true(node_is_read_only(a.base));
    node_ref(a.base);

    co_enter(co_create(active_start_co, &a));
    LOOP_WAIT_WHILE(!a.done);
    /* Started on the top it was given, which the job holds now. */
    assert_non_null(a.job);
    job_cancel_sync(&a.job->job, true);
    LOOP_WAIT_WHILE(job_find("ac"));
    assert_null(node_find("actop"));
    node_unref(a.base);
    assert_null(node_next(NULL));
}

/* ---- Moving a graph whose job goes meanwhile ---- */

static int mover_moves;

static bool mover_can_set_loop(BlockChild *c, StrataLoop *loop,
                               GError **errp)
{
    return true;
}

static void mover_set_loop(BlockChild *c, StrataLoop *loop)
{
    mover_moves++;
}

/* A parent that follows its node to another thread, as a job does. */
static const BlockChildClass mover_class = {
    .kind = "job",
    .get_parent_desc = watcher_desc,
    .can_set_loop = mover_can_set_loop,
    .set_loop = mover_set_loop,
};

static void detach_bh(void *opaque)
{
    g_assert(child_detach(opaque, NULL));
}

typedef struct {
    BlockNode *bs;
    BlockChild *job_edge;
    StrataLoop *to;
    bool ok, done;
} Move;

static void coroutine_fn move_co(void *opaque)
{
    Move *m = opaque;
    GError *err = NULL;
    /* The job completes (its edges go) while the move drains. */
    loop_bh(detach_bh, m->job_edge);
    m->ok = node_set_loop(m->bs, m->to, &err);
    if (err) {
        print_message("node_set_loop: %s\n", err->message);
    }
    g_clear_error(&err);
    m->done = true;
}

/*
 * node_set_loop() (x-blockdev-set-iothread, an export's iothread) drains
 * the nodes it found and then told the parents it had found before: one
 * whose edge went during the drains was told on freed memory.  What is
 * moved is what is there once drained.
 */
static void test_set_loop_parent_gone(void **state)
{
    GError *err = NULL;
    IOThreadParams p;
    iothread_params_default(&p);
    IOThread *t = iothread_new("drainrefs", &p, &err);
    assert_non_null(t);
    BlockNode *bs = open_named("mv");
    Move m = { .bs = bs, .to = iothread_loop(t) };
    m.job_edge = child_attach(bs, "source", &mover_class, 0, 0,
                              BLK_PERM_ALL, NULL, &err);
    assert_non_null(m.job_edge);

    mover_moves = 0;
    co_enter(co_create(move_co, &m));
    LOOP_WAIT_WHILE(!m.done);
    assert_true(m.ok);
    assert_int_equal(mover_moves, 0);
    assert_ptr_equal(node_loop(bs), iothread_loop(t));

    assert_true(node_set_loop(bs, NULL, &err));
    node_unref(bs);
    iothread_free(t);
}

/* ---- x-strata-discard-source: an image dropped while reopened ---- */

typedef struct {
    BlockNode *bs;
    bool ok, found_after, done;
} Discard;

static void coroutine_fn discard_prepare_co(void *opaque)
{
    Discard *d = opaque;
    GError *err = NULL;
    GPtrArray *reopened = g_ptr_array_new();
    g_autofree char *name = g_strdup(node_get_name(d->bs));

    /* A job's completion drops the image from its chain (the last
     * reference but the reopen's) while the reopen drains. */
    loop_bh(unref_bh, d->bs);
    d->ok = discard_source_prepare(d->bs, reopened, &err);
    g_clear_error(&err);
    d->found_after = node_find(name) == d->bs;
    discard_source_restore(reopened);
    g_ptr_array_free(reopened, true);
    d->done = true;
}

/*
 * A commit with x-strata-discard-source makes its read-only images
 * writable one by one (a reopen: drains) before the chain is frozen, and
 * took its own reference only after the reopen: the image was gone by
 * then, and the reference went to freed memory.
 */
static void test_discard_source_image_dropped(void **state)
{
    g_autofree char *p = make_qcow2("ds.qcow2", MiB, NULL);
    Discard d = { 0 };
    d.bs = open_json(json_pack("{s:s, s:s, s:b, s:{s:s, s:s}}", "driver",
                               "qcow2", "node-name", "dsimg", "read-only",
                               1, "file", "driver", "file", "filename", p));
    assert_true(node_is_read_only(d.bs));

    co_enter(co_create(discard_prepare_co, &d));
    LOOP_WAIT_WHILE(!d.done);
    assert_true(d.ok);
    assert_true(d.found_after);
    assert_null(node_find("dsimg"));
    assert_null(node_next(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_begin_keeps_node),
        cmocka_unit_test(test_finalize_twice),
        cmocka_unit_test(test_active_commit_top_gone),
        cmocka_unit_test(test_set_loop_parent_gone),
        cmocka_unit_test(test_discard_source_image_dropped),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
