/*
 * strata/block-ops.h, the node operations the tools and the daemon share:
 * snapshots with the primary-child fallback and QEMU's messages (which
 * name the device a backend gives), check, make-empty, amend, backing
 * change and measure, and that each works from inside a coroutine as
 * well as from outside one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "strata/backend.h"
#include "strata/block-ops.h"
#include "strata/units.h"
#include "support.h"

static char *qcow2_path, *raw_path;

static BlockBackend *open_rw(const char *path, const char *fmt)
{
    GError *err = NULL;
    json_t *opts = json_pack("{s:s}", "driver", fmt);
    BlockBackend *blk = blk_new_open(path, opts, NODE_O_RDWR, &err);

    if (!blk) {
        fail_msg("%s: %s", path, err->message);
    }
    return blk;
}

static void expect_error(GError **err, const char *msg)
{
    assert_non_null(*err);
    assert_string_equal((*err)->message, msg);
    g_clear_error(err);
}

static void test_snapshots(void **state)
{
    BlockBackend *blk = open_rw(qcow2_path, "qcow2");
    BlockNode *bs = blk_node(blk);
    NodeSnapshot sn = { .name = "s1", .date_sec = 1, .icount = UINT64_MAX };
    NodeSnapshot *list = NULL;
    uint8_t buf[512];
    GError *err = NULL;

    memset(buf, 0xa5, sizeof(buf));
    assert_int_equal(node_snapshot_list(bs, &list), 0);
    g_free(list);
    assert_int_equal(node_snapshot_create(bs, &sn, &err), 0);
    assert_null(err);
    assert_int_equal(node_snapshot_list(bs, &list), 1);
    assert_string_equal(list[0].name, "s1");
    assert_string_equal(list[0].id_str, "1");
    g_free(list);
    assert_true(node_snapshot_supported(bs));

    /* Found by name, by id, by both; a mismatch of either finds none. */
    NodeSnapshot found;
    assert_int_equal(node_snapshot_find(bs, NULL, "s1", &found), 1);
    assert_string_equal(found.id_str, "1");
    assert_int_equal(node_snapshot_find(bs, "1", NULL, &found), 1);
    assert_int_equal(node_snapshot_find(bs, "1", "s1", &found), 1);
    assert_int_equal(node_snapshot_find(bs, "2", "s1", &found), 0);
    assert_int_equal(node_snapshot_find(bs, NULL, "s2", &found), 0);

    /* Reverting brings back the zeroes the snapshot saw. */
    assert_int_equal(blk_pwrite(blk, 0, sizeof(buf), buf, 0), 0);
    assert_int_equal(node_snapshot_goto(bs, "s1", &err), 0);
    assert_int_equal(blk_pread(blk, 0, sizeof(buf), buf, 0), 0);
    assert_int_equal(buf[0], 0);
    assert_int_equal(buf[511], 0);

    assert_true(node_snapshot_goto(bs, "nope", &err) < 0);
    assert_non_null(err);
    g_clear_error(&err);
    assert_int_equal(node_snapshot_delete(bs, NULL, "s1", &err), 0);
    assert_int_equal(node_snapshot_list(bs, &list), 0);
    g_free(list);
    blk_unref(blk);
}

/* A raw node over a qcow2 node: the snapshot goes to the qcow2 image. */
static void test_snapshot_fallback(void **state)
{
    GError *err = NULL;
    json_t *opts = json_pack("{s:s,s:{s:s,s:{s:s,s:s}}}", "driver", "raw",
                             "file", "driver", "qcow2", "file", "driver",
                             "file", "filename", qcow2_path);
    BlockBackend *blk = blk_new_open(NULL, opts, NODE_O_RDWR, &err);
    NodeSnapshot sn = { .name = "via-raw", .icount = UINT64_MAX };
    NodeSnapshot *list = NULL;
    BlockNode *bs;

    assert_non_null(blk);
    bs = blk_node(blk);
    assert_string_equal(node_get_format_name(node_snapshot_fallback(bs)),
                        "qcow2");
    assert_int_equal(node_snapshot_create(bs, &sn, &err), 0);
    assert_int_equal(node_snapshot_list(node_file(bs), &list), 1);
    assert_string_equal(list[0].name, "via-raw");
    g_free(list);
    assert_int_equal(node_snapshot_delete(bs, NULL, "via-raw", &err), 0);
    blk_unref(blk);
}

/* QEMU 7.2's messages, naming the device when the backend has a name. */
static void test_unsupported(void **state)
{
    BlockBackend *blk = open_rw(raw_path, "raw");
    BlockNode *bs = blk_node(blk);
    NodeSnapshot sn = { .name = "x" };
    NodeSnapshot *list = NULL;
    BlockCheckResult res;
    BlockMeasureInfo mi;
    GError *err = NULL;

    assert_int_equal(node_snapshot_list(bs, &list), -ENOTSUP);
    assert_false(node_snapshot_supported(bs));
    assert_int_equal(node_snapshot_find(bs, NULL, "x", &sn), -ENOTSUP);
    assert_int_equal(node_snapshot_create(bs, &sn, &err), -ENOTSUP);
    expect_error(&err, "Block format 'raw' used by device '' does not "
                 "support internal snapshots");
    blk_set_name(blk, "drive0");
    assert_int_equal(node_snapshot_delete(bs, NULL, "x", &err), -ENOTSUP);
    expect_error(&err, "Block format 'raw' used by device 'drive0' does not "
                 "support internal snapshots");
    assert_int_equal(node_snapshot_goto(bs, "x", &err), -ENOTSUP);
    expect_error(&err, "Block driver does not support snapshots");
    assert_int_equal(node_snapshot_load_tmp(bs, "1", NULL, &err), -EINVAL);
    expect_error(&err, "Device is not readonly");

    assert_int_equal(node_check(bs, &res, 0, NULL, NULL), -ENOTSUP);
    assert_int_equal(node_make_empty(bs, &err), -ENOTSUP);
    expect_error(&err, "raw does not support emptying nodes");
    assert_int_equal(node_amend(bs, NULL, false, NULL, NULL, &err), -ENOTSUP);
    expect_error(&err, "Block driver 'raw' does not support option "
                 "amendment");
    assert_int_equal(node_change_backing_file(bs, "b", "raw", false, &err),
                     -ENOTSUP);
    g_clear_error(&err);

    assert_false(node_measure("null-co", NULL, NULL, &mi, &err));
    expect_error(&err, "Block driver 'null-co' does not support size "
                 "measurement");
    assert_false(node_measure("nope", NULL, NULL, &mi, &err));
    expect_error(&err, "Unknown file format 'nope'");
    blk_unref(blk);
}

static void test_backing_and_check(void **state)
{
    BlockBackend *blk = open_rw(qcow2_path, "qcow2");
    BlockNode *bs = blk_node(blk);
    BlockCheckResult res;
    GError *err = NULL;

    assert_int_equal(node_change_backing_file(bs, NULL, "qcow2", false, &err),
                     -EINVAL);
    g_clear_error(&err);
    assert_int_equal(node_change_backing_file(bs, "b.qcow2", NULL, true,
                                              &err), -EINVAL);
    g_clear_error(&err);
    assert_int_equal(node_change_backing_file(bs, "b.qcow2", "qcow2", true,
                                              &err), 0);
    assert_string_equal(node_backing_file(bs), "b.qcow2");
    assert_string_equal(node_backing_format(bs), "qcow2");
    assert_int_equal(node_change_backing_file(bs, NULL, NULL, false, &err), 0);
    assert_string_equal(node_backing_file(bs), "");

    assert_int_equal(node_check(bs, &res, CHECK_FIX_LEAKS, NULL, NULL), 0);
    assert_int_equal(res.corruptions + res.leaks + res.check_errors, 0);
    assert_true(res.image_end_offset > 0);
    assert_int_equal(node_make_empty(bs, &err), 0);
    assert_null(err);
    blk_unref(blk);
}

static void collect_line(void *opaque, const char *line)
{
    g_ptr_array_add(opaque, g_strdup(line));
}

/*
 * The check's findings come back to the caller, one line each: an image
 * whose L1 entry is cleared leaks its L2 table and data cluster.
 */
static void test_check_report(void **state)
{
    char *path = test_path("leak.qcow2");
    GPtrArray *lines = g_ptr_array_new_with_free_func(g_free);
    BlockCheckResult res;
    GError *err = NULL;
    uint8_t buf[512], be[8];

    if (!image_create("qcow2", path, json_pack("{s:i}", "size", MiB),
                      &err)) {
        fail_msg("%s", err->message);
    }
    BlockBackend *blk = open_rw(path, "qcow2");
    memset(buf, 0xa5, sizeof(buf));
    assert_int_equal(blk_pwrite(blk, 0, sizeof(buf), buf, 0), 0);
    blk_unref(blk);

    /* The header's l1_table_offset (big endian at byte 40); clear entry 0. */
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, 40, SEEK_SET), 0);
    assert_int_equal(fread(be, 1, 8, f), 8);
    uint64_t l1 = 0;
    for (int i = 0; i < 8; i++) {
        l1 = l1 << 8 | be[i];
    }
    memset(be, 0, sizeof(be));
    assert_int_equal(fseek(f, (long)l1, SEEK_SET), 0);
    assert_int_equal(fwrite(be, 1, 8, f), 8);
    fclose(f);

    blk = open_rw(path, "qcow2");
    assert_int_equal(node_check(blk_node(blk), &res, 0, collect_line, lines),
                     0);
    assert_int_equal(res.leaks, 2);
    assert_int_equal(lines->len, 2);
    for (guint i = 0; i < lines->len; i++) {
        const char *line = lines->pdata[i];
        assert_true(g_str_has_prefix(line, "Leaked cluster "));
        assert_true(g_str_has_suffix(line, " refcount=1 reference=0"));
    }
    blk_unref(blk);
    g_ptr_array_free(lines, true);
    unlink(path);
    g_free(path);
}

static void test_measure(void **state)
{
    BlockMeasureInfo mi;
    GError *err = NULL;
    json_t *opts = json_pack("{s:i}", "size", 1000);

    assert_true(node_measure("raw", opts, NULL, &mi, &err));
    assert_int_equal(mi.required, 1024);
    assert_int_equal(mi.fully_allocated, 1024);
    json_decref(opts);
    /* qemu-img measure --size 1G -O qcow2: 393216 and 1074135040. */
    opts = json_pack("{s:I}", "size", (json_int_t)GiB);
    assert_true(node_measure("qcow2", opts, NULL, &mi, &err));
    assert_int_equal(mi.required, 393216);
    assert_int_equal(mi.fully_allocated, 1074135040);
    json_decref(opts);
    opts = json_pack("{s:i}", "cluster_size", 3);
    assert_false(node_measure("qcow2", opts, NULL, &mi, &err));
    expect_error(&err, "Cluster size must be a power of two between 512 and "
                 "2048k");
    json_decref(opts);
}

/* The same entry points from a coroutine (a QMP handler runs in one). */
typedef struct InCo {
    BlockNode *bs;
    int snapshots, allocated;
    int64_t pnum;
} InCo;

static void coroutine_fn in_co(void *opaque)
{
    InCo *c = opaque;
    NodeSnapshot *list = NULL;

    c->snapshots = node_snapshot_list(c->bs, &list);
    g_free(list);
    c->allocated = node_is_allocated(c->bs, 0, 512, &c->pnum);
}

static void test_in_coroutine(void **state)
{
    BlockBackend *blk = open_rw(qcow2_path, "qcow2");
    InCo c = { .bs = blk_node(blk) };

    co_run_sync(in_co, &c);
    assert_int_equal(c.snapshots, 0);
    assert_int_equal(c.allocated, 0);
    assert_true(c.pnum >= 512);
    blk_unref(blk);
}

static int setup(void **state)
{
    GError *err = NULL;

    if (test_tmpdir_setup(state) != 0) {
        return -1;
    }
    qcow2_path = test_path("a.qcow2");
    raw_path = test_path("r.raw");
    if (!image_create("qcow2", qcow2_path, json_pack("{s:i}", "size", MiB),
                      &err) ||
        !image_create("raw", raw_path, json_pack("{s:i}", "size", MiB),
                      &err)) {
        fail_msg("%s", err->message);
    }
    return 0;
}
static int teardown(void **state)
{
    g_free(qcow2_path);
    g_free(raw_path);
    return test_tmpdir_teardown(state);
}
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshots),
        cmocka_unit_test(test_snapshot_fallback),
        cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_backing_and_check),
        cmocka_unit_test(test_check_report),
        cmocka_unit_test(test_measure),
        cmocka_unit_test(test_in_coroutine),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
