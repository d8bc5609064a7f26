/*
 * Active commit (commit_active_start) and the mirror job (mirror_start)
 * on qcow2 chains in a temporary folder, driven without QMP: the base is
 * reopened read-write, the job becomes ready, writes of a user of the top
 * during the job reach the base, job-complete puts the base in the top's
 * place for that user, the images between top and base are frozen while
 * the job runs; a soft cancel in ready leaves the user on the top; a start
 * that fails gives the base back read-only and changes nothing.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <glib.h>

#include "strata/backend.h"
#include "strata/block-ops.h"
#include "strata/blockjob.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "strata/mirror.h"
#include "strata/units.h"
#include "support.h"

#define SIZE (4 * MiB)

/* base 0x11 in [0, 2M); mid 0x22 in [1M, 2M); top 0x33 in [1.5M, 3M). */
typedef struct Chain {
    char *base, *mid, *top;
    BlockBackend *blk;           /* the user of the top */
    BlockNode *top_bs, *mid_bs, *base_bs;
} Chain;

static void chain_open(Chain *c, bool with_mid)
{
    c->base = make_qcow2("base.qcow2", SIZE, NULL);
    BlockBackend *b = open_blk(c->base);
    write_pattern(b, 0, 2 * MiB, 0x11);
    blk_unref(b);
    const char *below = c->base;
    if (with_mid) {
        c->mid = make_qcow2("mid.qcow2", SIZE, c->base);
        b = open_blk(c->mid);
        write_pattern(b, 1 * MiB, 1 * MiB, 0x22);
        blk_unref(b);
        below = c->mid;
    }
    c->top = make_qcow2("top.qcow2", SIZE, below);
    c->blk = open_blk(c->top);
    write_pattern(c->blk, 3 * MiB / 2, 3 * MiB / 2, 0x33);
    c->top_bs = blk_node(c->blk);
    c->mid_bs = with_mid ? node_backing(c->top_bs) : NULL;
    c->base_bs = node_backing(with_mid ? c->mid_bs : c->top_bs);
    assert_non_null(c->base_bs);
}

static void chain_close(Chain *c)
{
    blk_unref(c->blk);
    unlink(c->top);
    unlink(c->base);
    if (c->mid) {
        unlink(c->mid);
    }
    g_free(c->top);
    g_free(c->mid);
    g_free(c->base);
}

static void expect_chain_data(BlockBackend *blk, bool with_mid)
{
    check_pattern(blk, 0, with_mid ? 1 * MiB : 3 * MiB / 2, 0x11);
    if (with_mid) {
        check_pattern(blk, 1 * MiB, MiB / 2, 0x22);
    }
    check_pattern(blk, 3 * MiB / 2, 3 * MiB / 2, 0x33);
    check_pattern(blk, 3 * MiB, 1 * MiB, 0);
}

static BlockJob *start_commit(Chain *c, const char *id, int64_t speed)
{
    GError *err = NULL;
    BlockJob *job = commit_active_start(id, c->top_bs, c->base_bs, 0, speed,
                                        BLOCKDEV_ON_ERROR_REPORT, NULL, NULL,
                                        &err);
    if (!job) {
        fail_msg("commit_active_start: %s", err->message);
    }
    job_ref(&job->job);
    return job;
}

static void test_commit_complete(bool with_mid)
{
    Chain c = { 0 };
    chain_open(&c, with_mid);
    assert_true(node_is_read_only(c.base_bs));

    BlockJob *job = start_commit(&c, "c0", 0);
    Job *j = &job->job;
    assert_int_equal(job_type(j), JOB_TYPE_COMMIT);
    /* The base is written by the job; the chain may not change. */
    assert_false(node_is_read_only(c.base_bs));
    GError *err = NULL;
    BlockChild *edge = node_backing_child(with_mid ? c.mid_bs : c.top_bs);
    assert_false(child_check_not_frozen(edge, "detach", &err));
    g_clear_error(&err);

    LOOP_WAIT_WHILE(!job_is_ready(j) && !job_is_completed(j));
    assert_true(job_is_ready(j));
    /* A write of the user while ready reaches the base too. */
    write_pattern(c.blk, 3 * MiB + 64 * KiB, 64 * KiB, 0x44);
    assert_int_equal(job_complete_sync(j, &err), 0);
    assert_int_equal(j->ret, 0);
    job_unref(j);

    /* The user now reads the base, which holds everything. */
    assert_ptr_equal(blk_node(c.blk), c.base_bs);
    assert_false(node_is_read_only(c.base_bs));
    check_pattern(c.blk, 3 * MiB + 64 * KiB, 64 * KiB, 0x44);
    check_pattern(c.blk, 3 * MiB, 64 * KiB, 0);
    check_pattern(c.blk, 0, with_mid ? 1 * MiB : 3 * MiB / 2, 0x11);
    if (with_mid) {
        check_pattern(c.blk, 1 * MiB, MiB / 2, 0x22);
    }
    check_pattern(c.blk, 3 * MiB / 2, 3 * MiB / 2, 0x33);
    /* And the base on its own, opened again once the user is gone. */
    blk_unref(c.blk);
    c.blk = open_blk(c.base);
    assert_null(node_backing(blk_node(c.blk)));
    check_pattern(c.blk, 3 * MiB + 64 * KiB, 64 * KiB, 0x44);
    check_pattern(c.blk, 3 * MiB / 2, 3 * MiB / 2, 0x33);
    chain_close(&c);
}

static void test_commit_active(void **state)
{
    (void)state;
    test_commit_complete(false);
}

static void test_commit_active_intermediate(void **state)
{
    (void)state;
    test_commit_complete(true);
}

/* A soft cancel in ready: the user stays on the top, the base is a copy. */
static void test_commit_soft_cancel(void **state)
{
    (void)state;
    Chain c = { 0 };
    chain_open(&c, false);
    BlockJob *job = start_commit(&c, "c1", 0);
    Job *j = &job->job;
    LOOP_WAIT_WHILE(!job_is_ready(j) && !job_is_completed(j));
    assert_true(job_is_ready(j));
    assert_int_equal(job_cancel_sync(j, false), 0);
    job_unref(j);
    assert_ptr_equal(blk_node(c.blk), c.top_bs);
    assert_ptr_equal(node_backing(c.top_bs), c.base_bs);
    expect_chain_data(c.blk, false);
    /* The chain is no longer frozen. */
    GError *err = NULL;
    assert_true(child_check_not_frozen(node_backing_child(c.top_bs),
                                       "detach", &err));
    chain_close(&c);
}

/*
 * A forced cancel before ready: nothing switched, data as it was; the
 * base stays writable (QEMU 7.2 does not reopen it read-only).
 */
static void test_commit_force_cancel(void **state)
{
    (void)state;
    Chain c = { 0 };
    chain_open(&c, false);
    BlockJob *job = start_commit(&c, "c2", 64 * KiB);
    Job *j = &job->job;
    assert_int_equal(job_cancel_sync(j, true), -ECANCELED);
    job_unref(j);
    assert_false(node_is_read_only(c.base_bs));
    assert_ptr_equal(blk_node(c.blk), c.top_bs);
    expect_chain_data(c.blk, false);
    chain_close(&c);
}

/* A start that fails (a bad job id) leaves the base read-only again. */
static void test_commit_start_fails(void **state)
{
    (void)state;
    Chain c = { 0 };
    chain_open(&c, false);
    GError *err = NULL;
    BlockJob *job = commit_active_start("1bad", c.top_bs, c.base_bs, 0, 0,
                                        BLOCKDEV_ON_ERROR_REPORT, NULL, NULL,
                                        &err);
    assert_null(job);
    assert_string_equal(err->message, "Invalid job ID '1bad'");
    g_clear_error(&err);
    assert_true(node_is_read_only(c.base_bs));
    assert_ptr_equal(blk_node(c.blk), c.top_bs);
    assert_ptr_equal(node_backing(c.top_bs), c.base_bs);
    expect_chain_data(c.blk, false);
    chain_close(&c);
}

/* mirror_start into a node of another chain, completed. */
static void test_mirror_complete(void **state)
{
    (void)state;
    Chain c = { 0 };
    chain_open(&c, true);
    char *tp = make_qcow2("target.qcow2", SIZE, NULL);
    BlockBackend *tb = open_blk(tp);
    BlockNode *target = blk_node(tb);
    node_ref(target);
    blk_unref(tb);

    GError *err = NULL;
    MirrorOptions o = {
        .job_id = "m0", .source = c.top_bs, .target = target,
        .sync = MIRROR_SYNC_FULL, .backing_mode = MIRROR_LEAVE_BACKING_CHAIN,
        .on_source_error = BLOCKDEV_ON_ERROR_REPORT,
        .on_target_error = BLOCKDEV_ON_ERROR_REPORT, .unmap = true,
    };
    BlockJob *job = mirror_start(&o, &err);
    if (!job) {
        fail_msg("mirror_start: %s", err->message);
    }
    Job *j = &job->job;
    job_ref(j);
    LOOP_WAIT_WHILE(!job_is_ready(j) && !job_is_completed(j));
    assert_true(job_is_ready(j));
    write_pattern(c.blk, 0, 64 * KiB, 0x55);
    assert_int_equal(job_complete_sync(j, &err), 0);
    job_unref(j);
    assert_ptr_equal(blk_node(c.blk), target);
    check_pattern(c.blk, 0, 64 * KiB, 0x55);
    check_pattern(c.blk, 64 * KiB, 1 * MiB - 64 * KiB, 0x11);
    check_pattern(c.blk, 1 * MiB, MiB / 2, 0x22);
    check_pattern(c.blk, 3 * MiB / 2, 3 * MiB / 2, 0x33);
    node_unref(target);
    chain_close(&c);
    unlink(tp);
    g_free(tp);
}

/*
 * x-strata-skip-identical: a raw base whose first sector fails any write
 * (blkdebug), a top that rewrites the first MiB with what the base holds
 * there.  Skipping identical data, the commit never writes that range and
 * succeeds; without the option it writes it and fails.
 */
static void commit_skip(bool skip)
{
    char *bp = test_path("base.raw");
    char *tp = make_qcow2("top.qcow2", SIZE, NULL);
    GError *err = NULL;
    json_t *o = json_pack("{s:I}", "size", (json_int_t)SIZE);
    assert_true(image_create("raw", bp, o, &err));
    BlockBackend *b = blk_new_open(bp, json_pack("{s:s}", "driver", "raw"),
                                   NODE_O_RDWR, &err);
    assert_non_null(b);
    write_pattern(b, 0, 2 * MiB, 0x11);
    blk_unref(b);

    /* The base opens writable: blkdebug nodes refuse a reopen that
     * repeats their inject-error rules. */
    json_t *opts = json_pack(
        "{s:s, s:{s:s, s:s}, s:{s:s, s:b, s:{s:s, s:{s:s, s:s}, "
        "s:[{s:s, s:s, s:i, s:i}]}}}",
        "driver", "qcow2",
        "file", "driver", "file", "filename", tp,
        "backing", "driver", "raw", "read-only", 0,
        "file", "driver", "blkdebug",
        "image", "driver", "file", "filename", bp,
        "inject-error", "event", "none", "iotype", "write",
        "errno", EIO, "sector", 0);
    b = blk_new_open(NULL, opts, NODE_O_RDWR, &err);
    if (!b) {
        fail_msg("open: %s", err->message);
    }
    write_pattern(b, 0, 1 * MiB, 0x11);
    write_pattern(b, 3 * MiB / 2, 3 * MiB / 2, 0x33);
    BlockNode *top = blk_node(b), *base = node_backing(top);

    CommitActiveOptions x = { .skip_identical = skip };
    BlockJob *job = commit_active_start("c3", top, base, 0, 0,
                                        BLOCKDEV_ON_ERROR_REPORT, NULL, &x,
                                        &err);
    if (!job) {
        fail_msg("commit_active_start: %s", err->message);
    }
    Job *j = &job->job;
    job_ref(j);
    LOOP_WAIT_WHILE(!job_is_ready(j) && !job_is_completed(j));
    if (skip) {
        assert_true(job_is_ready(j));
        assert_int_equal(job_complete_sync(j, &err), 0);
        assert_ptr_equal(blk_node(b), base);
        check_pattern(b, 0, 3 * MiB / 2, 0x11);
        check_pattern(b, 3 * MiB / 2, 3 * MiB / 2, 0x33);
    } else {
        assert_false(job_is_ready(j));
        LOOP_WAIT_WHILE(!job_is_completed(j));
        assert_int_equal(j->ret, -EIO);
        assert_ptr_equal(blk_node(b), top);
    }
    job_unref(j);
    blk_unref(b);
    unlink(bp);
    unlink(tp);
    g_free(bp);
    g_free(tp);
}

static void test_commit_skip_identical(void **state)
{
    (void)state;
    commit_skip(true);
    commit_skip(false);
}

/*
 * x-strata-discard-source: each range committed leaves the top (and the
 * images between it and the base), which then reads through to the base.
 * A soft cancel in ready keeps the user on the top: the data is the same,
 * the top and mid hold nothing any more (qemu-img map: everything at the
 * base's depth), qemu-img check finds them clean, and mid is read-only
 * again.  With x-strata-skip-identical, a range the base already held is
 * dropped too.
 */
static void commit_discard_source(bool with_mid, bool skip)
{
    Chain c = { 0 };
    chain_open(&c, with_mid);
    GError *err = NULL;
    CommitActiveOptions x = { .discard_source = true,
                              .skip_identical = skip };
    if (skip) {
        /* What the base holds already: skipped, and dropped all the same. */
        write_pattern(c.blk, 0, 64 * KiB, 0x11);
    }
    BlockJob *job = commit_active_start("c4", c.top_bs, c.base_bs, 0, 0,
                                        BLOCKDEV_ON_ERROR_REPORT, NULL, &x,
                                        &err);
    if (!job) {
        fail_msg("commit_active_start: %s", err->message);
    }
    if (with_mid) {
        assert_false(node_is_read_only(c.mid_bs));
    }
    Job *j = &job->job;
    job_ref(j);
    LOOP_WAIT_WHILE(!job_is_ready(j) && !job_is_completed(j));
    assert_true(job_is_ready(j));
    /* A guest write while ready: copied, then dropped from the top too. */
    write_pattern(c.blk, 3 * MiB / 2, 64 * KiB, 0x44);
    check_pattern(c.blk, 3 * MiB / 2, 64 * KiB, 0x44);
    assert_int_equal(job_cancel_sync(j, false), 0);
    assert_int_equal(j->ret, 0);
    job_unref(j);
    assert_ptr_equal(blk_node(c.blk), c.top_bs);
    if (with_mid) {
        assert_true(node_is_read_only(c.mid_bs));
        check_pattern(c.blk, 1 * MiB, MiB / 2, 0x22);
    }
    check_pattern(c.blk, 3 * MiB / 2, 64 * KiB, 0x44);
    check_pattern(c.blk, 3 * MiB / 2 + 64 * KiB, 3 * MiB / 2 - 64 * KiB,
                  0x33);
    check_pattern(c.blk, 0, with_mid ? 1 * MiB : 3 * MiB / 2, 0x11);
    blk_unref(c.blk);

    int status;
    const char *imgs[] = { c.top, c.mid };
    for (int i = 0; i < (with_mid ? 2 : 1); i++) {
        const char *check[] = { "qemu-img", "check", "-q", "-f", "qcow2",
                                imgs[i], NULL };
        g_free(run_capture(check, &status));
        assert_true(g_spawn_check_wait_status(status, NULL));
    }
    const char *map[] = { "qemu-img", "map", "--output=json", "-f", "qcow2",
                          c.top, NULL };
    char *out = run_capture(map, &status);
    assert_true(g_spawn_check_wait_status(status, NULL));
    if (strstr(out, "\"depth\": 0") ||
        (with_mid && strstr(out, "\"depth\": 1"))) {
        fail_msg("the top or mid still holds data:\n%s", out);
    }
    g_free(out);
    c.blk = open_blk(c.top);
    check_pattern(c.blk, 3 * MiB / 2, 64 * KiB, 0x44);
    check_pattern(c.blk, 0, with_mid ? 1 * MiB : 3 * MiB / 2, 0x11);
    chain_close(&c);
}

static void test_commit_discard_source(void **state)
{
    (void)state;
    commit_discard_source(false, false);
    commit_discard_source(true, false);
    commit_discard_source(true, true);
}

/* Refused when the image between top and base has another user; nothing
 * changes (the base and mid stay read-only). */
/*
 * x-strata-discard-source when the guest rewrites part of a committed
 * range between its copy and its punch: the job's flush of the base (the
 * first step of a punch) is held by a blkdebug breakpoint while the guest
 * writes one cluster in the middle of the 1.5 MiB the job just copied in
 * one range.  That cluster is copied again; the clean clusters around it
 * must leave the top all the same (they stayed there for good once: the
 * whole range was refused for its dirty part).
 */
static void test_commit_discard_source_redirty(void **state)
{
    (void)state;
    char *bp = test_path("base.raw");
    char *tp = make_qcow2("top.qcow2", SIZE, NULL);
    GError *err = NULL;
    json_t *o = json_pack("{s:I}", "size", (json_int_t)SIZE);
    assert_true(image_create("raw", bp, o, &err));

    json_t *opts = json_pack(
        "{s:s, s:{s:s, s:s}, s:{s:s, s:b, s:{s:s, s:{s:s, s:s}}}}",
        "driver", "qcow2",
        "file", "driver", "file", "filename", tp,
        "backing", "driver", "raw", "read-only", 0,
        "file", "driver", "blkdebug",
        "image", "driver", "file", "filename", bp);
    BlockBackend *b = blk_new_open(NULL, opts, NODE_O_RDWR, &err);
    if (!b) {
        fail_msg("open: %s", err->message);
    }
    write_pattern(b, 3 * MiB / 2, 3 * MiB / 2, 0x33);
    BlockNode *top = blk_node(b), *base = node_backing(top);
    assert_int_equal(node_debug_breakpoint(base, "flush_to_disk", "f"), 0);

    CommitActiveOptions x = { .discard_source = true };
    BlockJob *job = commit_active_start("c5", top, base, 0, 0,
                                        BLOCKDEV_ON_ERROR_REPORT, NULL, &x,
                                        &err);
    if (!job) {
        fail_msg("commit_active_start: %s", err->message);
    }
    Job *j = &job->job;
    job_ref(j);
    LOOP_WAIT_WHILE(node_debug_is_suspended(base, "f") != 1);
    assert_false(job_is_ready(j));
    write_pattern(b, 2 * MiB, 64 * KiB, 0x44);
    assert_int_equal(node_debug_resume(base, "f"), 0);
    LOOP_WAIT_WHILE(!job_is_ready(j) && !job_is_completed(j));
    assert_true(job_is_ready(j));
    assert_int_equal(job_cancel_sync(j, false), 0);
    assert_int_equal(j->ret, 0);
    job_unref(j);
    check_pattern(b, 3 * MiB / 2, MiB / 2, 0x33);
    check_pattern(b, 2 * MiB, 64 * KiB, 0x44);
    check_pattern(b, 2 * MiB + 64 * KiB, MiB - 64 * KiB, 0x33);
    blk_unref(b);

    int status;
    /* No backing file in its header: whatever the top holds is data. */
    const char *map[] = { "qemu-img", "map", "--output=json", "-f", "qcow2",
                          tp, NULL };
    char *out = run_capture(map, &status);
    assert_true(g_spawn_check_wait_status(status, NULL));
    if (strstr(out, "\"data\": true")) {
        fail_msg("the top still holds data:\n%s", out);
    }
    g_free(out);
    unlink(bp);
    unlink(tp);
    g_free(bp);
    g_free(tp);
}

static void test_commit_discard_source_refused(void **state)
{
    (void)state;
    Chain c = { 0 };
    chain_open(&c, true);
    GError *err = NULL;
    BlockBackend *other = blk_new(0, BLK_PERM_ALL);
    assert_true(blk_insert_node(other, c.mid_bs, &err));
    CommitActiveOptions x = { .discard_source = true };
    assert_null(commit_active_start("c5", c.top_bs, c.base_bs, 0, 0,
                                    BLOCKDEV_ON_ERROR_REPORT, NULL, &x,
                                    &err));
    char *want = g_strdup_printf("Parameter 'x-strata-discard-source' "
                                 "needs the image '%s' to have no other "
                                 "users than the job, but an unnamed block "
                                 "device uses it", node_get_name(c.mid_bs));
    if (strcmp(err->message, want) != 0) {
        fail_msg("unexpected error: %s", err->message);
    }
    g_free(want);
    g_clear_error(&err);
    blk_unref(other);
    assert_true(node_is_read_only(c.base_bs));
    assert_true(node_is_read_only(c.mid_bs));
    assert_ptr_equal(blk_node(c.blk), c.top_bs);
    expect_chain_data(c.blk, true);
    chain_close(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit_active),
        cmocka_unit_test(test_commit_active_intermediate),
        cmocka_unit_test(test_commit_soft_cancel),
        cmocka_unit_test(test_commit_force_cancel),
        cmocka_unit_test(test_commit_start_fails),
        cmocka_unit_test(test_commit_skip_identical),
        cmocka_unit_test(test_commit_discard_source),
        cmocka_unit_test(test_commit_discard_source_redirty),
        cmocka_unit_test(test_commit_discard_source_refused),
        cmocka_unit_test(test_mirror_complete),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
