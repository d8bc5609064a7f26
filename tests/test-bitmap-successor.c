/*
 * Successor bitmaps (a job owning a bitmap: backup's sync bitmap) and the
 * merge of bitmaps into the node that survives a pivot
 * (x-strata-merge-bitmaps): writes during the job land in the successor,
 * abdicate keeps only them under the bitmap's name, reclaim merges them
 * back, recording follows the successor; the pivot merge makes missing
 * bitmaps, merges into existing ones across granularities and sizes,
 * reads a busy source with its successor, fills a destination for an
 * inconsistent source, and skips anonymous bitmaps.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include <unistd.h>
#include "strata/backend.h"
#include "strata/bitmap-pivot.h"
#include "strata/block-driver.h"
#include "strata/dirty-bitmap.h"

#define SIZE (4 * 1024 * 1024)

static char *paths[2];

static BlockBackend *open_raw(int i, int64_t size)
{
    GError *err = NULL;

    if (!paths[i]) {
        int fd = g_file_open_tmp("test-bitmap-successor-XXXXXX", &paths[i],
                                 NULL);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, size), 0);
        close(fd);
    }
    json_t *o = json_pack("{s:s, s:{s:s, s:s}}", "driver", "raw",
                          "file", "driver", "file", "filename", paths[i]);
    BlockBackend *blk = blk_new_open(NULL, o, NODE_O_RDWR, &err);
    if (!blk) {
        fail_msg("open: %s", err->message);
    }
    return blk;
}

static void test_successor(void **state)
{
    (void)state;
    BlockBackend *blk = open_raw(0, SIZE);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;
    uint8_t buf[4096] = { 0 };

    DirtyBitmap *b = node_create_dirty_bitmap(bs, 65536, "b", &err);
    assert_non_null(b);
    dirty_bitmap_set(b, 0, 65536);
    assert_true(dirty_bitmap_create_successor(b, &err));
    assert_true(dirty_bitmap_busy(b));
    assert_false(dirty_bitmap_enabled(b));
    assert_true(dirty_bitmap_recording(b));
    /* A second owner is refused. */
    assert_false(dirty_bitmap_create_successor(b, &err));
    assert_non_null(strstr(err->message, "currently in use"));
    g_clear_error(&err);

    /* The write goes to the successor only. */
    assert_int_equal(blk_pwrite(blk, 1048576, 4096, buf, 0), 0);
    assert_int_equal(dirty_bitmap_count(b), 65536);
    DirtyBitmap *succ = dirty_bitmap_successor(b);
    assert_non_null(succ);
    assert_null(dirty_bitmap_name(succ));
    assert_true(dirty_bitmap_get(succ, 1048576));

    /* reclaim: the union, recording again, not busy. */
    DirtyBitmap *r = dirty_bitmap_reclaim(b);
    assert_ptr_equal(r, b);
    assert_false(dirty_bitmap_busy(b));
    assert_true(dirty_bitmap_enabled(b));
    assert_int_equal(dirty_bitmap_count(b), 2 * 65536);
    assert_int_equal(g_list_length(node_dirty_bitmaps(bs)), 1);

    /* abdicate: only what was written meanwhile, name and persistence
     * move, the successor of a disabled bitmap does not record. */
    dirty_bitmap_set_persistent(b, true);
    assert_true(dirty_bitmap_create_successor(b, &err));
    assert_int_equal(blk_pwrite(blk, 3 * 1048576, 4096, buf, 0), 0);
    DirtyBitmap *a = dirty_bitmap_abdicate(b);
    assert_string_equal(dirty_bitmap_name(a), "b");
    assert_true(dirty_bitmap_persistent(a));
    assert_false(dirty_bitmap_busy(a));
    assert_int_equal(dirty_bitmap_count(a), 65536);
    assert_true(dirty_bitmap_get(a, 3 * 1048576));
    assert_ptr_equal(node_find_dirty_bitmap(bs, "b"), a);
    assert_int_equal(g_list_length(node_dirty_bitmaps(bs)), 1);

    dirty_bitmap_set_enabled(a, false);
    assert_true(dirty_bitmap_create_successor(a, &err));
    assert_false(dirty_bitmap_recording(a));
    assert_int_equal(blk_pwrite(blk, 0, 4096, buf, 0), 0);
    a = dirty_bitmap_reclaim(a);
    assert_false(dirty_bitmap_enabled(a));
    assert_int_equal(dirty_bitmap_count(a), 65536);
    dirty_bitmap_set_persistent(a, false);
    blk_unref(blk);
}

static void test_merge_internal(void **state)
{
    (void)state;
    BlockBackend *blk = open_raw(0, SIZE);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;

    DirtyBitmap *fine = node_create_dirty_bitmap(bs, 4096, "fine", &err);
    DirtyBitmap *coarse = node_create_dirty_bitmap(bs, 65536, NULL, &err);
    dirty_bitmap_set(fine, 70000, 1);
    dirty_bitmap_set_busy(fine, true);   /* no user checks here */
    dirty_bitmap_merge_internal(coarse, fine);
    assert_int_equal(dirty_bitmap_count(coarse), 65536);
    assert_true(dirty_bitmap_get(coarse, 65536));
    dirty_bitmap_set_busy(fine, false);
    dirty_bitmap_release(coarse);
    dirty_bitmap_release(fine);
    blk_unref(blk);
}

static void test_pivot_merge(void **state)
{
    (void)state;
    BlockBackend *from_blk = open_raw(0, SIZE);
    BlockBackend *dst_blk = open_raw(1, SIZE / 2);
    BlockNode *from = blk_node(from_blk), *dst = blk_node(dst_blk);
    GError *err = NULL;

    DirtyBitmap *x = node_create_dirty_bitmap(from, 4096, "x", &err);
    DirtyBitmap *y = node_create_dirty_bitmap(from, 65536, "y", &err);
    DirtyBitmap *bad = node_create_dirty_bitmap(from, 65536, "bad", &err);
    DirtyBitmap *anon = node_create_dirty_bitmap(from, 65536, NULL, &err);
    assert_non_null(anon);
    dirty_bitmap_set(x, 8192, 4096);
    dirty_bitmap_set(x, 3 * 1048576, 4096);     /* past dst's end */
    dirty_bitmap_set(y, 1048576, 65536);
    dirty_bitmap_set_enabled(y, false);
    dirty_bitmap_set_inconsistent(bad);
    /* y is busy in a job: its successor holds later writes. */
    assert_true(dirty_bitmap_create_successor(y, &err));
    dirty_bitmap_set(dirty_bitmap_successor(y), 0, 512);

    DirtyBitmap *dy = node_create_dirty_bitmap(dst, 131072, "y", &err);
    DirtyBitmap *dbad = node_create_dirty_bitmap(dst, 65536, "bad", &err);
    assert_non_null(dy);
    assert_non_null(dbad);

    bitmaps_merge_into(dst, from);

    DirtyBitmap *dx = node_find_dirty_bitmap(dst, "x");
    assert_non_null(dx);
    assert_int_equal(dirty_bitmap_granularity(dx), 4096);
    assert_true(dirty_bitmap_enabled(dx));
    assert_int_equal(dirty_bitmap_count(dx), 4096);
    assert_true(dirty_bitmap_get(dx, 8192));
    /* y: the busy source's bits and its successor's, 128 KiB chunks. */
    assert_int_equal(dirty_bitmap_count(dy), 2 * 131072);
    assert_true(dirty_bitmap_get(dy, 0));
    assert_true(dirty_bitmap_get(dy, 1048576));
    /* bad: all dirty; nothing made for the anonymous bitmap. */
    assert_int_equal(dirty_bitmap_count(dbad), SIZE / 2);
    assert_int_equal(g_list_length(node_dirty_bitmaps(dst)), 3);
    /* The source is untouched. */
    assert_int_equal(dirty_bitmap_count(x), 2 * 4096);

    dirty_bitmap_reclaim(y);
    blk_unref(dst_blk);
    blk_unref(from_blk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_successor),
        cmocka_unit_test(test_merge_internal),
        cmocka_unit_test(test_pivot_merge),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    for (int i = 0; i < 2; i++) {
        if (paths[i]) {
            unlink(paths[i]);
            g_free(paths[i]);
        }
    }
    return ret;
}
