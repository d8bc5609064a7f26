/*
 * The commit job (jobs/commit.c) on a qcow2 chain base <- mid <- act in a
 * temporary folder: the graph and headers after an intermediate commit,
 * the graph left as it was after a failed start and after a cancel,
 * copy_only (strata-img's mode) leaving the graph alone, and
 * x-strata-skip-identical not rewriting what base already holds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "strata/backend.h"
#include "strata/block.h"
#include "strata/block-ops.h"
#include "strata/commit.h"
#include "strata/error.h"
#include "strata/loop.h"
#include "strata/units.h"
#include "support.h"

#define SIZE (4 * MiB)

/* A qcow2 image over backing (a name in the folder, NULL: none), made
 * again in place of the last test's. */
static void create(const char *name, const char *backing)
{
    g_autofree char *p = test_path(name);
    g_autofree char *b = backing ? test_path(backing) : NULL;

    unlink(p);
    g_free(make_qcow2(name, SIZE, b));
}

static BlockNode *open_chain(const char *name)
{
    g_autofree char *p = test_path(name);
    GError *err = NULL;
    BlockNode *bs = node_open(p, json_pack("{s:s}", "driver", "qcow2"),
                              NODE_O_RDWR, &err);
    if (!bs) {
        fail_msg("open %s: %s", name, err->message);
    }
    return bs;
}

/* Fill [off, off + len) of the image `name` (alone) with byte v. */
static void fill(const char *name, int64_t off, int64_t len, int v)
{
    g_autofree char *p = test_path(name);
    GError *err = NULL;
    BlockBackend *blk = blk_new_open(p, json_pack("{s:s}", "driver", "qcow2"),
                                     NODE_O_RDWR | NODE_O_NO_BACKING, &err);
    uint8_t *buf = g_malloc(len);

    assert_non_null(blk);
    memset(buf, v, len);
    assert_int_equal(blk_pwrite(blk, off, len, buf, 0), 0);
    g_free(buf);
    blk_unref(blk);
}

static void chain(void)
{
    create("base.qcow2", NULL);
    create("mid.qcow2", "base.qcow2");
    create("act.qcow2", "mid.qcow2");
    fill("base.qcow2", 0, 2 * MiB, 1);
    fill("mid.qcow2", 1 * MiB, 1 * MiB, 2);      /* differs from base */
    fill("mid.qcow2", 0, 512 * KiB, 1);          /* what base holds */
    fill("act.qcow2", 3 * MiB, 64 * KiB, 3);
}

/* The byte the guest reads at off through bs. */
static int byte_at(BlockNode *bs, int64_t off)
{
    BlockBackend *blk = blk_new(0, BLK_PERM_ALL);
    uint8_t b = 0xff;

    assert_true(blk_insert_node(blk, bs, NULL));
    assert_int_equal(blk_pread(blk, off, 1, &b, 0), 0);
    blk_unref(blk);
    return b;
}

typedef struct Done {
    bool done;
    int ret;
} Done;

static void on_done(void *opaque, int ret)
{
    Done *d = opaque;
    d->done = true;
    d->ret = ret;
}

static int run(CommitOptions *o, CommitStats *st)
{
    Done d = { 0 };
    GError *err = NULL;
    BlockJob *job;

    o->cb = on_done;
    o->opaque = &d;
    if (!(o->creation_flags & JOB_INTERNAL)) {
        o->creation_flags |= JOB_MANUAL_DISMISS;
    }
    job = commit_start(o, &err);
    if (!job) {
        fail_msg("commit_start: %s", err->message);
    }
    job_ref(&job->job);
    LOOP_WAIT_WHILE(!d.done);
    commit_get_stats(job, st);
    if (!(o->creation_flags & JOB_INTERNAL)) {
        assert_true(job_dismiss(&job->job, NULL));
    }
    job_unref(&job->job);
    return d.ret;
}

static void test_intermediate(void **state)
{
    chain();
    BlockNode *act = open_chain("act.qcow2");
    BlockNode *mid = node_backing(act), *base = node_backing(mid);
    CommitOptions o = {
        .job_id = "c", .bs = act, .top = mid, .base = base,
        .on_error = BLOCKDEV_ON_ERROR_REPORT,
    };
    CommitStats st;

    node_ref(mid);
    assert_int_equal(run(&o, &st), 0);
    assert_ptr_equal(node_backing(act), base);
    g_autofree char *bp = test_path("base.qcow2");
    assert_string_equal(node_backing_file(act), bp);
    assert_string_equal(node_backing_format(act), "qcow2");
    assert_int_equal(byte_at(act, 0), 1);
    assert_int_equal(byte_at(act, 1 * MiB), 2);
    assert_int_equal(byte_at(act, 3 * MiB), 3);
    /* base alone now holds what mid held */
    assert_int_equal(byte_at(base, 1 * MiB + 4096), 2);
    /* what mid allocates: [0, 512 KiB) and [1 MiB, 2 MiB) */
    assert_int_equal(st.bytes_written, 1536 * KiB);
    node_unref(mid);
    node_unref(act);
}

static void test_skip_identical(void **state)
{
    chain();
    BlockNode *act = open_chain("act.qcow2");
    BlockNode *mid = node_backing(act), *base = node_backing(mid);
    CommitOptions o = {
        .job_id = "c", .bs = act, .top = mid, .base = base,
        .on_error = BLOCKDEV_ON_ERROR_REPORT, .skip_identical = true,
    };
    CommitStats st;

    assert_int_equal(run(&o, &st), 0);
    /* mid's first 512 KiB equal base's: not written again */
    assert_int_equal(st.bytes_written, 1 * MiB);
    assert_true(st.bytes_skipped >= 512 * KiB);
    assert_int_equal(byte_at(act, 0), 1);
    assert_int_equal(byte_at(act, 1 * MiB), 2);
    assert_int_equal(byte_at(base, 1 * MiB), 2);
    node_unref(act);
}

static void test_failed_start(void **state)
{
    chain();
    BlockNode *act = open_chain("act.qcow2");
    BlockNode *mid = node_backing(act), *base = node_backing(mid);
    CommitOptions o = {
        .job_id = "c", .bs = act, .top = mid, .base = base,
        .on_error = BLOCKDEV_ON_ERROR_REPORT,
        .filter_node_name = node_get_name(base),   /* taken */
    };
    GError *err = NULL;

    assert_null(commit_start(&o, &err));
    assert_non_null(err);
    g_clear_error(&err);
    o.filter_node_name = NULL;
    o.top = base;
    assert_null(commit_start(&o, &err));
    assert_string_equal(err->message,
                        "Invalid files for merge: top and base are the same");
    g_clear_error(&err);
    /* nothing left behind: the chain as it was, nothing frozen */
    assert_ptr_equal(node_backing(act), mid);
    assert_ptr_equal(node_backing(mid), base);
    assert_int_equal(child_frozen_count(node_backing_child(act)), 0);
    assert_int_equal(child_frozen_count(node_backing_child(mid)), 0);
    assert_null(job_next(NULL));
    node_unref(act);
}

static void test_copy_only(void **state)
{
    chain();
    BlockNode *act = open_chain("act.qcow2");
    BlockNode *mid = node_backing(act), *base = node_backing(mid);
    CommitOptions o = {
        .bs = act, .top = act, .base = mid, .creation_flags = JOB_INTERNAL,
        .on_error = BLOCKDEV_ON_ERROR_REPORT, .copy_only = true,
    };
    CommitStats st;

    assert_int_equal(run(&o, &st), 0);
    assert_ptr_equal(node_backing(act), mid);
    assert_ptr_equal(node_backing(mid), base);
    assert_int_equal(byte_at(mid, 3 * MiB), 3);
    assert_int_equal(child_frozen_count(node_backing_child(act)), 0);
    node_unref(act);
}

/* ---- x-strata-discard-source ---- */

/* base <- low <- mid <- act: commit mid (and low) into base. */
static void chain4(void)
{
    create("base.qcow2", NULL);
    create("low.qcow2", "base.qcow2");
    create("mid.qcow2", "low.qcow2");
    create("act.qcow2", "mid.qcow2");
    fill("base.qcow2", 0, 2 * MiB, 1);
    fill("low.qcow2", 1 * MiB, 1 * MiB, 4);
    fill("low.qcow2", 2 * MiB, 256 * KiB, 5);
    fill("mid.qcow2", 1536 * KiB, 256 * KiB, 2);  /* over low's */
    fill("act.qcow2", 3 * MiB, 64 * KiB, 3);
}

/* What the guest reads through act, before and after the job. */
static void check_chain4_data(BlockNode *act)
{
    assert_int_equal(byte_at(act, 0), 1);
    assert_int_equal(byte_at(act, 1 * MiB), 4);
    assert_int_equal(byte_at(act, 1536 * KiB), 2);
    assert_int_equal(byte_at(act, 1792 * KiB - 1), 2);
    assert_int_equal(byte_at(act, 1792 * KiB), 4);
    assert_int_equal(byte_at(act, 2 * MiB), 5);
    assert_int_equal(byte_at(act, 3 * MiB), 3);
    assert_int_equal(byte_at(act, 3 * MiB + 64 * KiB), 0);
}

/* Bytes the image `name` itself allocates, as qemu-img map reports. */
static int64_t allocated_by_qemu_img(const char *name)
{
    g_autofree char *p = test_path(name);
    char *argv[] = { "timeout", "60", "qemu-img", "map", "-U",
                     "--output=json", "-f", "qcow2", p, NULL };
    g_autofree char *out = NULL;
    GError *err = NULL;
    int status = 0;

    if (!g_spawn_sync(NULL, argv, NULL, G_SPAWN_SEARCH_PATH |
                      G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, &out, NULL,
                      &status, &err)) {
        fail_msg("qemu-img map: %s", err->message);
    }
    assert_int_equal(status, 0);
    json_error_t jerr;
    json_t *map = json_loads(out, 0, &jerr);
    assert_non_null(map);
    int64_t sum = 0;
    size_t i;
    json_t *e;
    json_array_foreach(map, i, e) {
        if (json_integer_value(json_object_get(e, "depth")) == 0 &&
            json_is_true(json_object_get(e, "present"))) {
            sum += json_integer_value(json_object_get(e, "length"));
        }
    }
    json_decref(map);
    return sum;
}

static void test_discard_source(void **state)
{
    chain4();
    BlockNode *act = open_chain("act.qcow2");
    BlockNode *mid = node_backing(act), *low = node_backing(mid);
    BlockNode *base = node_backing(low);
    CommitOptions o = {
        .job_id = "c", .bs = act, .top = mid, .base = base,
        .on_error = BLOCKDEV_ON_ERROR_REPORT, .discard_source = true,
    };
    CommitStats st;

    check_chain4_data(act);
    assert_int_equal(allocated_by_qemu_img("mid.qcow2"), 256 * KiB);
    assert_int_equal(allocated_by_qemu_img("low.qcow2"), 1280 * KiB);
    assert_int_equal(run(&o, &st), 0);
    assert_ptr_equal(node_backing(act), base);
    check_chain4_data(act);
    /* the dropped images kept as files: their committed ranges are gone */
    assert_int_equal(allocated_by_qemu_img("mid.qcow2"), 0);
    assert_int_equal(allocated_by_qemu_img("low.qcow2"), 0);
    assert_int_equal(allocated_by_qemu_img("act.qcow2"), 64 * KiB);
    node_unref(act);
}

/* Another user of a merged image would see its data go: refused. */
static void test_discard_source_refused(void **state)
{
    chain4();
    BlockNode *act = open_chain("act.qcow2");
    BlockNode *mid = node_backing(act), *low = node_backing(mid);
    BlockNode *base = node_backing(low);
    BlockBackend *other = blk_new(0, BLK_PERM_ALL);
    CommitOptions o = {
        .job_id = "c", .bs = act, .top = mid, .base = base,
        .on_error = BLOCKDEV_ON_ERROR_REPORT, .discard_source = true,
    };
    GError *err = NULL;

    assert_true(blk_insert_node(other, low, NULL));
    assert_null(commit_start(&o, &err));
    assert_non_null(err);
    assert_non_null(strstr(err->message, "Parameter 'x-strata-discard-"
                           "source' needs the image '"));
    assert_non_null(strstr(err->message, "to have no other users than the "
                           "job, but "));
    g_clear_error(&err);
    /* the chain as it was, read-only images again, nothing frozen */
    assert_ptr_equal(node_backing(act), mid);
    assert_ptr_equal(node_backing(mid), low);
    assert_true(node_is_read_only(mid));
    assert_true(node_is_read_only(low));
    assert_int_equal(child_frozen_count(node_backing_child(mid)), 0);
    assert_null(job_next(NULL));
    blk_unref(other);
    check_chain4_data(act);
    assert_int_equal(allocated_by_qemu_img("mid.qcow2"), 256 * KiB);
    node_unref(act);
}

/*
 * Cancelled once the copy is done, which is when the discards start: the
 * job either ends cancelled (the chain unchanged, maybe partly emptied
 * from the bottom) or had already finished; the guest reads the same
 * data through act either way.
 */
static void test_discard_source_cancel(void **state)
{
    chain4();
    BlockNode *act = open_chain("act.qcow2");
    BlockNode *mid = node_backing(act), *low = node_backing(mid);
    BlockNode *base = node_backing(low);
    Done d = { 0 };
    CommitOptions o = {
        .job_id = "c", .bs = act, .top = mid, .base = base,
        .on_error = BLOCKDEV_ON_ERROR_REPORT, .discard_source = true,
        .creation_flags = JOB_MANUAL_DISMISS,
        .cb = on_done, .opaque = &d,
    };
    GError *err = NULL;

    node_ref(mid);
    node_ref(low);
    BlockJob *job = commit_start(&o, &err);
    if (!job) {
        fail_msg("commit_start: %s", err->message);
    }
    job_ref(&job->job);
    LOOP_WAIT_WHILE(!d.done &&
                    (job->job.progress_total == 0 ||
                     job->job.progress_current < job->job.progress_total));
    if (!d.done) {
        job_cancel(&job->job, true);
    }
    LOOP_WAIT_WHILE(!d.done);
    assert_true(job_dismiss(&job->job, NULL));
    job_unref(&job->job);
    if (d.ret == -ECANCELED) {
        assert_ptr_equal(node_backing(act), mid);
        assert_ptr_equal(node_backing(mid), low);
        assert_ptr_equal(node_backing(low), base);
        assert_true(node_is_read_only(mid));
        assert_true(node_is_read_only(low));
        /* emptied bottom first, if at all */
        if (allocated_by_qemu_img("mid.qcow2") == 0) {
            assert_int_equal(allocated_by_qemu_img("low.qcow2"), 0);
        }
    } else {
        assert_int_equal(d.ret, 0);
        assert_ptr_equal(node_backing(act), base);
    }
    check_chain4_data(act);
    node_unref(low);
    node_unref(mid);
    node_unref(act);
}

/*
 * The state a cancel can leave half way (the bottom image emptied, the
 * top not yet) reads as before: what the job relies on.
 */
static void test_discard_source_bottom_first(void **state)
{
    chain4();
    /* base holds the chain's data as the copy leaves it */
    fill("base.qcow2", 1 * MiB, 1 * MiB, 4);
    fill("base.qcow2", 1536 * KiB, 256 * KiB, 2);
    fill("base.qcow2", 2 * MiB, 256 * KiB, 5);
    /* low emptied, mid not yet */
    g_autofree char *p = test_path("low.qcow2");
    char *argv[] = { "timeout", "60", "qemu-img", "create", "-q", "-f",
                     "qcow2", "-F", "qcow2", "-b", "base.qcow2", p, "4M",
                     NULL };
    int status = -1;
    assert_true(g_spawn_sync(test_tmpdir, argv, NULL, G_SPAWN_SEARCH_PATH,
                             NULL, NULL, NULL, NULL, &status, NULL));
    assert_int_equal(status, 0);
    BlockNode *act = open_chain("act.qcow2");
    check_chain4_data(act);
    node_unref(act);
}

/*
 * A failed discard (an L2 write of the top fails after the image below
 * was emptied): the job fails, the chain stays and reads as before.
 */
static void test_discard_source_error(void **state)
{
    chain4();
    g_autofree char *ap = test_path("act.qcow2");
    g_autofree char *mp = test_path("mid.qcow2");
    g_autofree char *lp = test_path("low.qcow2");
    GError *err = NULL;
    /* mid's file fails its L2 writes, which only the discards make */
    BlockNode *lown = node_open(lp, json_pack("{s:s, s:s}", "driver", "qcow2",
                                              "node-name", "low"),
                                NODE_O_RDWR, &err);
    if (!lown) {
        fail_msg("open low: %s", err->message);
    }
    BlockNode *midn = node_open(NULL, json_pack(
        "{s:s, s:s, s:s, s:{s:s, s:{s:s, s:s}, s:[{s:s, s:i}]}}",
        "driver", "qcow2", "node-name", "mid", "backing", "low",
        "file", "driver", "blkdebug",
        "image", "driver", "file", "filename", mp,
        "inject-error", "event", "l2_update", "errno", 5),
        NODE_O_RDWR, &err);
    if (!midn) {
        fail_msg("open mid: %s", err->message);
    }
    BlockNode *act = node_open(NULL, json_pack(
        "{s:s, s:s, s:{s:s, s:s}}", "driver", "qcow2", "backing", "mid",
        "file", "driver", "file", "filename", ap), NODE_O_RDWR, &err);
    if (!act) {
        fail_msg("open: %s", err->message);
    }
    node_unref(midn);
    node_unref(lown);
    BlockNode *mid = node_backing(act), *low = node_backing(mid);
    BlockNode *base = node_backing(low);
    CommitOptions o = {
        .job_id = "c", .bs = act, .top = mid, .base = base,
        .on_error = BLOCKDEV_ON_ERROR_REPORT, .discard_source = true,
    };
    CommitStats st;

    check_chain4_data(act);
    assert_int_equal(run(&o, &st), -EIO);
    assert_ptr_equal(node_backing(act), mid);
    assert_ptr_equal(node_backing(mid), low);
    assert_ptr_equal(node_backing(low), base);
    /* low gave its clusters up, mid could not: the data is the same */
    assert_int_equal(allocated_by_qemu_img("low.qcow2"), 0);
    check_chain4_data(act);
    node_unref(act);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_intermediate),
        cmocka_unit_test(test_skip_identical),
        cmocka_unit_test(test_failed_start),
        cmocka_unit_test(test_copy_only),
        cmocka_unit_test(test_discard_source),
        cmocka_unit_test(test_discard_source_refused),
        cmocka_unit_test(test_discard_source_cancel),
        cmocka_unit_test(test_discard_source_bottom_first),
        cmocka_unit_test(test_discard_source_error),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
