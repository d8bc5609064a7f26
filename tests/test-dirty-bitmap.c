/*
 * Named dirty bitmaps on a node: marked by writes, zero writes and
 * discards through the generic request path (a raw node, which has no idea
 * bitmaps exist), the flags and their checks, byte <-> chunk mapping,
 * merges across granularities, resize, the management calls' messages,
 * and the hash QEMU's debug command gives.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include <unistd.h>
#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/dirty-bitmap.h"

#define SIZE (4 * 1024 * 1024)

/* A raw image in a temporary file: discard and resize reach a driver. */
static char *path;

static BlockBackend *open_raw(bool discard)
{
    GError *err = NULL;
    int fd;

    if (!path) {
        fd = g_file_open_tmp("test-dirty-bitmap-XXXXXX", &path, NULL);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, SIZE), 0);
        close(fd);
    }
    json_t *o = json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver", "raw",
                          "discard", discard ? "unmap" : "ignore",
                          "file", "driver", "file", "filename", path);
    BlockBackend *blk = blk_new_open(NULL, o, NODE_O_RDWR | NODE_O_RESIZE,
                                     &err);
    if (!blk) {
        fail_msg("open: %s", err->message);
    }
    return blk;
}

static char *err_msg(GError *err)
{
    assert_non_null(err);
    char *m = g_strdup(err->message);
    g_error_free(err);
    return m;
}

static void test_marking(void **state)
{
    (void)state;
    BlockBackend *blk = open_raw(true);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;
    uint8_t buf[4096] = { 0 };

    assert_true(node_dirty_bitmap_add(bs, "a", 65536, false, false, &err));
    assert_true(node_dirty_bitmap_add(bs, "off", 4096, false, true, &err));
    DirtyBitmap *a = node_find_dirty_bitmap(bs, "a");
    DirtyBitmap *off = node_find_dirty_bitmap(bs, "off");
    assert_non_null(a);
    assert_int_equal(dirty_bitmap_granularity(a), 65536);
    assert_int_equal(dirty_bitmap_size(a), SIZE);

    /* One byte dirties its whole chunk; a run crossing chunks both. */
    assert_int_equal(blk_pwrite(blk, 70000, 1, buf, 0), 0);
    assert_int_equal(dirty_bitmap_count(a), 65536);
    assert_int_equal(dirty_bitmap_next_dirty(a, 0, SIZE), 65536);
    assert_int_equal(dirty_bitmap_next_dirty(a, 70000, SIZE), 70000);
    assert_int_equal(dirty_bitmap_next_clean(a, 65536, SIZE), 131072);
    assert_int_equal(blk_pwrite_zeroes(blk, 1048576 - 512, 1024, 0), 0);
    assert_int_equal(dirty_bitmap_count(a), 3 * 65536);
    assert_int_equal(blk_pdiscard(blk, 2 * 1048576, 65536), 0);
    assert_int_equal(dirty_bitmap_count(a), 4 * 65536);
    assert_true(dirty_bitmap_get(a, 2 * 1048576));
    assert_false(dirty_bitmap_get(a, 3 * 1048576));
    /* Disabled: nothing recorded. */
    assert_int_equal(dirty_bitmap_count(off), 0);

    /* Merge into a finer bitmap: the chunks of the coarse one. */
    assert_true(node_dirty_bitmap_merge(bs, "off", bs, "a", &err));
    assert_int_equal(dirty_bitmap_count(off), 4 * 65536);
    assert_int_equal(dirty_bitmap_next_dirty(off, 0, SIZE), 65536);

    /* Clear, then a discard the node ignores marks nothing. */
    assert_true(node_dirty_bitmap_clear(bs, "a", &err));
    assert_int_equal(dirty_bitmap_count(a), 0);
    assert_int_equal(dirty_bitmap_next_dirty(a, 0, SIZE), -1);
    blk_unref(blk);

    blk = open_raw(false);
    bs = blk_node(blk);
    assert_true(node_dirty_bitmap_add(bs, "a", 0, false, false, &err));
    a = node_find_dirty_bitmap(bs, "a");
    assert_int_equal(dirty_bitmap_granularity(a), 65536);
    assert_int_equal(blk_pdiscard(blk, 0, 65536), 0);
    assert_int_equal(dirty_bitmap_count(a), 0);
    blk_unref(blk);
}

static void test_flags_and_errors(void **state)
{
    (void)state;
    BlockBackend *blk = open_raw(true);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;
    uint8_t buf[512] = { 0 };
    char *m;

    assert_false(node_dirty_bitmap_add(bs, "", 0, false, false, &err));
    m = err_msg(err);
    err = NULL;
    assert_string_equal(m, "Bitmap name cannot be empty");
    g_free(m);
    assert_false(node_dirty_bitmap_add(bs, "x", 1000, false, false, &err));
    m = err_msg(err);
    err = NULL;
    assert_string_equal(m, "Granularity must be power of 2 and at least 512");
    g_free(m);
    assert_true(node_dirty_bitmap_add(bs, "x", 512, false, false, &err));
    assert_false(node_dirty_bitmap_add(bs, "x", 512, false, false, &err));
    m = err_msg(err);
    err = NULL;
    assert_string_equal(m, "Bitmap already exists: x");
    g_free(m);
    /* raw cannot store bitmaps. */
    assert_false(node_supports_persistent_dirty_bitmap(bs));
    assert_false(node_dirty_bitmap_add(bs, "p", 0, true, false, &err));
    m = err_msg(err);
    err = NULL;
    assert_non_null(strstr(m, "Can't store persistent bitmaps to "));
    g_free(m);
    assert_false(node_dirty_bitmap_remove(bs, "nope", &err));
    m = err_msg(err);
    err = NULL;
    assert_string_equal(m, "Dirty bitmap 'nope' not found");
    g_free(m);

    DirtyBitmap *x = node_find_dirty_bitmap(bs, "x");
    dirty_bitmap_set_busy(x, true);
    assert_false(node_dirty_bitmap_clear(bs, "x", &err));
    m = err_msg(err);
    err = NULL;
    assert_string_equal(m, "Bitmap 'x' is currently in use by another "
                        "operation and cannot be used");
    g_free(m);
    assert_false(node_dirty_bitmap_remove(bs, "x", &err));
    g_clear_error(&err);
    dirty_bitmap_set_busy(x, false);

    /* A read-only bitmap stops every write to the node. */
    dirty_bitmap_set_readonly(x, true);
    assert_int_equal(blk_pwrite(blk, 0, 512, buf, 0), -EPERM);
    assert_int_equal(blk_pwrite_zeroes(blk, 0, 512, 0), -EPERM);
    assert_int_equal(blk_pdiscard(blk, 0, 512), -EPERM);
    assert_true(node_dirty_bitmap_disable(bs, "x", &err));
    assert_false(node_dirty_bitmap_clear(bs, "x", &err));
    g_clear_error(&err);
    dirty_bitmap_set_readonly(x, false);
    assert_int_equal(blk_pwrite(blk, 0, 512, buf, 0), 0);
    /* Disabled: still nothing. */
    assert_int_equal(dirty_bitmap_count(x), 0);
    assert_true(node_dirty_bitmap_enable(bs, "x", &err));
    assert_int_equal(blk_pwrite(blk, 0, 512, buf, 0), 0);
    assert_int_equal(dirty_bitmap_count(x), 512);

    /* Resize: the bitmap follows; a merge needs equal sizes. */
    assert_true(node_dirty_bitmap_add(bs, "y", 65536, false, false, &err));
    assert_int_equal(blk_truncate(blk, SIZE * 2, false, PREALLOC_MODE_OFF, &err),
                     0);
    assert_int_equal(dirty_bitmap_size(x), SIZE * 2);
    assert_int_equal(blk_pwrite(blk, SIZE * 2 - 512, 512, buf, 0), 0);
    assert_int_equal(dirty_bitmap_count(x), 1024);
    assert_true(dirty_bitmap_get(x, SIZE * 2 - 1));
    assert_int_equal(blk_truncate(blk, SIZE, false, PREALLOC_MODE_OFF, &err), 0);
    assert_int_equal(dirty_bitmap_count(x), 512);

    dirty_bitmap_set_inconsistent(x);
    assert_false(dirty_bitmap_enabled(x));
    assert_false(node_dirty_bitmap_merge(bs, "y", bs, "x", &err));
    m = err_msg(err);
    err = NULL;
    assert_non_null(strstr(m, "Bitmap 'x' is inconsistent and cannot be "
                           "used"));
    g_free(m);
    assert_true(node_dirty_bitmap_remove(bs, "x", &err));
    assert_null(node_find_dirty_bitmap(bs, "x"));
    blk_unref(blk);
}

/*
 * The hash QEMU's debug command gives: qemu-storage-daemon 7.2 answered
 * x-debug-block-dirty-bitmap-sha256 with this value for a 10 MiB qcow2
 * image whose 4 KiB bitmap saw exactly these four writes (qemu-io).
 */
static void test_sha256(void **state)
{
    (void)state;
    BlockBackend *blk = open_raw(false);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;

    assert_int_equal(blk_truncate(blk, 10 * 1024 * 1024, false,
                                  PREALLOC_MODE_OFF, &err), 0);
    assert_true(node_dirty_bitmap_add(bs, "b", 4096, false, false, &err));
    DirtyBitmap *b = node_find_dirty_bitmap(bs, "b");
    dirty_bitmap_set(b, 0, 4096);
    dirty_bitmap_set(b, 1024 * 1024, 65536);
    dirty_bitmap_set(b, 9 * 1024 * 1024, 1024 * 1024);
    dirty_bitmap_set(b, 10236 * 1024, 4096);
    char *h = dirty_bitmap_sha256(b);
    assert_string_equal(h, "350726f5190d28d22fba75771185ff077f97a94f4e2f0a3e"
                           "d4c6b5097b8183ed");
    g_free(h);
    dirty_bitmap_clear(b);
    h = dirty_bitmap_sha256(b);
    assert_string_not_equal(h, "350726f5190d28d22fba75771185ff077f97a94f4e2f"
                               "0a3ed4c6b5097b8183ed");
    g_free(h);
    assert_int_equal(blk_truncate(blk, SIZE, false, PREALLOC_MODE_OFF, &err), 0);
    blk_unref(blk);
}

/*
 * What the transaction actions undo with: a backup of the bits, restored
 * after a clear and after a merge, searches and count included; and
 * remove's first half, which leaves the bitmap in place.
 */
static void test_backup_restore(void **state)
{
    (void)state;
    BlockBackend *blk = open_raw(false);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;

    assert_true(node_dirty_bitmap_add(bs, "t", 4096, false, false, &err));
    assert_true(node_dirty_bitmap_add(bs, "s", 65536, false, false, &err));
    DirtyBitmap *t = node_find_dirty_bitmap(bs, "t");
    DirtyBitmap *s = node_find_dirty_bitmap(bs, "s");
    dirty_bitmap_set(t, 8192, 4096);
    dirty_bitmap_set(t, 3 * 1024 * 1024, 100000);
    dirty_bitmap_set(s, 1024 * 1024, 65536);
    char *before = dirty_bitmap_sha256(t);
    int64_t count = dirty_bitmap_count(t);

    HBitmap *backup = dirty_bitmap_backup(t);
    assert_non_null(backup);
    dirty_bitmap_clear(t);
    assert_int_equal(dirty_bitmap_count(t), 0);
    dirty_bitmap_restore(t, backup);
    assert_int_equal(dirty_bitmap_count(t), count);
    assert_int_equal(dirty_bitmap_next_dirty(t, 0, SIZE), 8192);
    assert_int_equal(dirty_bitmap_next_clean(t, 8192, SIZE), 12288);
    assert_int_equal(dirty_bitmap_next_dirty(t, 12288, SIZE),
                     3 * 1024 * 1024);
    char *h = dirty_bitmap_sha256(t);
    assert_string_equal(h, before);
    g_free(h);

    backup = dirty_bitmap_backup(t);
    assert_true(dirty_bitmap_merge(t, s, &err));
    assert_int_equal(dirty_bitmap_count(t), count + 65536);
    dirty_bitmap_restore(t, backup);
    h = dirty_bitmap_sha256(t);
    assert_string_equal(h, before);
    g_free(h);
    g_free(before);

    /* remove's first half: checked, the bitmap left where it was. */
    assert_ptr_equal(node_dirty_bitmap_unstore(bs, "t", &err), t);
    assert_ptr_equal(node_find_dirty_bitmap(bs, "t"), t);
    dirty_bitmap_set_busy(t, true);
    assert_null(node_dirty_bitmap_unstore(bs, "t", &err));
    char *m = err_msg(err);
    assert_string_equal(m, "Bitmap 't' is currently in use by another "
                           "operation and cannot be used");
    g_free(m);
    err = NULL;
    assert_null(node_dirty_bitmap_unstore(bs, "nope", &err));
    m = err_msg(err);
    assert_string_equal(m, "Dirty bitmap 'nope' not found");
    g_free(m);
    dirty_bitmap_set_busy(t, false);
    blk_unref(blk);
}

static void expect_err(GError **err, const char *want)
{
    char *m = err_msg(*err);
    assert_string_equal(m, want);
    g_free(m);
    *err = NULL;
}

/*
 * strata's recovery of an inconsistent bitmap: every bit, recording, the
 * refusals; undone by dirty_bitmap_unrecover (the transaction's abort).
 */
static void test_recover(void **state)
{
    (void)state;
    BlockBackend *blk = open_raw(false);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;
    HBitmap *backup = NULL;

    assert_true(node_dirty_bitmap_add(bs, "i", 4096, false, true, &err));
    DirtyBitmap *i = node_find_dirty_bitmap(bs, "i");
    dirty_bitmap_set(i, 8192, 4096);
    dirty_bitmap_set_persistent(i, true);
    dirty_bitmap_set_inconsistent(i);
    char *before = dirty_bitmap_sha256(i);

    dirty_bitmap_set_busy(i, true);
    assert_null(node_dirty_bitmap_recover(bs, "i", NULL, &err));
    expect_err(&err, "Bitmap 'i' is currently in use by another operation "
                     "and cannot be used");
    dirty_bitmap_set_busy(i, false);
    dirty_bitmap_set_readonly(i, true);
    assert_null(node_dirty_bitmap_recover(bs, "i", NULL, &err));
    expect_err(&err, "Bitmap 'i' is readonly and cannot be modified");
    dirty_bitmap_set_readonly(i, false);
    assert_null(node_dirty_bitmap_recover(bs, "nope", NULL, &err));
    expect_err(&err, "Dirty bitmap 'nope' not found");

    assert_ptr_equal(node_dirty_bitmap_recover(bs, "i", &backup, &err), i);
    assert_non_null(backup);
    assert_false(dirty_bitmap_inconsistent(i));
    assert_true(dirty_bitmap_enabled(i));
    assert_true(dirty_bitmap_persistent(i));
    assert_int_equal(dirty_bitmap_count(i), SIZE);
    assert_int_equal(dirty_bitmap_next_clean(i, 0, SIZE), -1);
    assert_int_equal(dirty_bitmap_check(i, DIRTY_BITMAP_DEFAULT, NULL), 0);
    assert_null(node_dirty_bitmap_recover(bs, "i", NULL, &err));
    expect_err(&err, "Bitmap 'i' is not inconsistent: there is nothing to "
                     "recover");

    dirty_bitmap_unrecover(i, backup);
    assert_true(dirty_bitmap_inconsistent(i));
    assert_false(dirty_bitmap_enabled(i));
    char *h = dirty_bitmap_sha256(i);
    assert_string_equal(h, before);
    g_free(h);
    g_free(before);
    dirty_bitmap_release(i);
    blk_unref(blk);
}

/* strata's copy: bits kept, another granularity, refusals leave nothing. */
static void test_copy(void **state)
{
    (void)state;
    BlockBackend *blk = open_raw(false);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:i}", "driver", "null-co", "size",
                          SIZE / 2);
    BlockBackend *small = blk_new_open(NULL, o, NODE_O_RDWR, &err);

    assert_non_null(small);
    assert_true(node_dirty_bitmap_add(bs, "s", 65536, false, false, &err));
    DirtyBitmap *s = node_find_dirty_bitmap(bs, "s");
    dirty_bitmap_set(s, 100000, 5000);
    dirty_bitmap_set(s, 3 * 1024 * 1024, 1);

    DirtyBitmap *c = node_dirty_bitmap_copy(s, bs, "c", 0, false, true,
                                            &err);
    assert_non_null(c);
    assert_false(dirty_bitmap_enabled(c));
    assert_int_equal(dirty_bitmap_granularity(c), 65536);
    char *hs = dirty_bitmap_sha256(s), *hc = dirty_bitmap_sha256(c);
    assert_string_equal(hs, hc);
    g_free(hs);
    g_free(hc);

    /* Coarser: the 1 MiB chunks holding a dirty byte. */
    DirtyBitmap *m = node_dirty_bitmap_copy(s, bs, "m", 1 << 20, false,
                                            false, &err);
    assert_non_null(m);
    assert_true(dirty_bitmap_enabled(m));
    assert_int_equal(dirty_bitmap_count(m), 2 << 20);
    assert_int_equal(dirty_bitmap_next_dirty(m, 0, SIZE), 0);
    assert_int_equal(dirty_bitmap_next_dirty(m, 1 << 20, SIZE - (1 << 20)),
                     3 << 20);

    assert_null(node_dirty_bitmap_copy(s, bs, "c", 0, false, false, &err));
    expect_err(&err, "Bitmap already exists: c");
    assert_null(node_dirty_bitmap_copy(s, blk_node(small), "x", 0, false,
                                       false, &err));
    expect_err(&err, "Bitmaps are of different sizes (destination size is "
                     "2097152, source size is 4194304) and can't be merged");
    assert_null(node_find_dirty_bitmap(blk_node(small), "x"));
    assert_null(node_dirty_bitmap_copy(s, bs, "p", 0, true, false, &err));
    assert_non_null(err);
    g_clear_error(&err);
    assert_null(node_find_dirty_bitmap(bs, "p"));
    dirty_bitmap_set_inconsistent(s);
    assert_null(node_dirty_bitmap_copy(s, bs, "x", 0, false, false, &err));
    assert_non_null(strstr(err->message, "Bitmap 's' is inconsistent and "
                                         "cannot be used"));
    g_clear_error(&err);
    assert_null(node_find_dirty_bitmap(bs, "x"));
    blk_unref(small);
    blk_unref(blk);
}

/*
 * The per-node name index (an image may hold 65535 bitmaps): every
 * bitmap is found by name, released ones are not, a successor's
 * abdication moves the name to it, and the list keeps newest first.
 */
static void test_name_index(void **state)
{
    (void)state;
    BlockBackend *blk = open_raw(false);
    BlockNode *bs = blk_node(blk);
    GError *err = NULL;
    enum { N = 2000 };
    DirtyBitmap *bms[N];
    char name[16];

    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "b%d", i);
        bms[i] = node_create_dirty_bitmap(bs, 65536, name, &err);
        assert_non_null(bms[i]);
    }
    assert_ptr_equal(node_dirty_bitmaps(bs)->data, bms[N - 1]);
    assert_null(node_create_dirty_bitmap(bs, 65536, "b7", &err));
    g_clear_error(&err);
    /* Release every other one, from the middle of the list. */
    for (int i = 0; i < N; i += 2) {
        dirty_bitmap_release(bms[i]);
    }
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "b%d", i);
        assert_ptr_equal(node_find_dirty_bitmap(bs, name),
                         i % 2 ? bms[i] : NULL);
    }
    assert_int_equal(g_list_length(node_dirty_bitmaps(bs)), N / 2);
    /* The name goes to the successor; the anonymous one is not indexed. */
    assert_true(dirty_bitmap_create_successor(bms[1], &err));
    DirtyBitmap *child = dirty_bitmap_successor(bms[1]);
    assert_ptr_equal(node_find_dirty_bitmap(bs, "b1"), bms[1]);
    assert_ptr_equal(dirty_bitmap_abdicate(bms[1]), child);
    assert_ptr_equal(node_find_dirty_bitmap(bs, "b1"), child);
    assert_string_equal(dirty_bitmap_name(child), "b1");
    node_release_dirty_bitmaps(bs);
    assert_null(node_find_dirty_bitmap(bs, "b3"));
    assert_non_null(node_create_dirty_bitmap(bs, 65536, "b3", &err));
    node_release_dirty_bitmaps(bs);
    blk_unref(blk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_marking),
        cmocka_unit_test(test_flags_and_errors),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_backup_restore),
        cmocka_unit_test(test_recover),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_name_index),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    if (path) {
        unlink(path);
        g_free(path);
    }
    return ret;
}
