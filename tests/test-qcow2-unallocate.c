/*
 * child_co_unallocate() on qcow2: the range falls through to the backing
 * file (its whole clusters; partial edges keep their data), unlike a guest
 * discard, which makes clusters read as zeroes.  qemu-img 7.2 then finds
 * the image clean and maps the range to the backing file; a range marked
 * in the given bitmap is left alone; a node without the write permission
 * or a format that cannot is refused.
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
#include "strata/coroutine.h"
#include "strata/dirty-bitmap.h"
#include "strata/units.h"
#include "support.h"

#define SIZE (4 * MiB)

typedef struct {
    BlockChild *c;
    int64_t offset, bytes;
    DirtyBitmap *bm;
    int ret;
} Punch;

static void coroutine_fn punch_co(void *opaque)
{
    Punch *p = opaque;
    p->ret = child_co_unallocate(p->c, p->offset, p->bytes, p->bm);
}

static int punch(BlockBackend *blk, int64_t offset, int64_t bytes,
                 DirtyBitmap *bm)
{
    Punch p = { blk_root(blk), offset, bytes, bm, -EINPROGRESS };
    co_run_sync(punch_co, &p);
    return p.ret;
}

static void test_unallocate(void **state)
{
    (void)state;
    char *base = make_qcow2("base.qcow2", SIZE, NULL);
    BlockBackend *b = open_blk(base);
    write_pattern(b, 0, 2 * MiB, 0x11);
    blk_unref(b);
    char *top = make_qcow2("top.qcow2", SIZE, base);
    BlockBackend *blk = open_blk(top);
    write_pattern(blk, 0, 3 * MiB, 0x33);

    /* Clusters 1..15 fall through; the partial edges stay. */
    assert_int_equal(punch(blk, 64 * KiB - 512, MiB - 64 * KiB + 1024, NULL),
                     0);
    check_pattern(blk, 0, 64 * KiB, 0x33);
    check_pattern(blk, 64 * KiB, MiB - 64 * KiB, 0x11);
    check_pattern(blk, MiB, 64 * KiB, 0x33);
    /* Past the backing file's end it reads zeroes. */
    assert_int_equal(punch(blk, 2 * MiB, MiB, NULL), 0);
    check_pattern(blk, 2 * MiB, MiB, 0);
    check_pattern(blk, 3 * MiB / 2, MiB / 2, 0x33);
    /* Never written in the top: nothing to drop, no table made. */
    assert_int_equal(punch(blk, 3 * MiB, MiB, NULL), 0);

    /* A range marked in the bitmap is left as it is. */
    GError *err = NULL;
    DirtyBitmap *bm = node_create_dirty_bitmap(blk_node(blk), 64 * KiB, NULL,
                                               &err);
    assert_non_null(bm);
    dirty_bitmap_set(bm, 1536 * KiB, 64 * KiB);
    assert_int_equal(punch(blk, MiB + 256 * KiB, 512 * KiB, bm), -EAGAIN);
    check_pattern(blk, MiB + 256 * KiB, 512 * KiB, 0x33);
    dirty_bitmap_reset(bm, 0, SIZE);
    assert_int_equal(punch(blk, MiB + 256 * KiB, 256 * KiB, bm), 0);
    check_pattern(blk, MiB + 256 * KiB, 256 * KiB, 0x11);
    /* Vouched to read the same: not marked.  Without a bitmap: marked. */
    assert_int_equal(dirty_bitmap_next_dirty(bm, 0, SIZE), -1);
    assert_int_equal(punch(blk, 3 * MiB / 2, 64 * KiB, NULL), 0);
    assert_true(dirty_bitmap_get(bm, 3 * MiB / 2));
    check_pattern(blk, 3 * MiB / 2, 64 * KiB, 0x11);
    dirty_bitmap_release(bm);
    blk_unref(blk);

    /* qemu-img 7.2: clean, and the ranges map to the backing file. */
    int status;
    const char *check[] = { "qemu-img", "check", "-q", "-f", "qcow2", top,
                            NULL };
    g_free(run_capture(check, &status));
    assert_true(g_spawn_check_wait_status(status, NULL));
    const char *map[] = { "qemu-img", "map", "--output=json", "-f", "qcow2",
                          top, NULL };
    char *out = run_capture(map, &status);
    assert_true(g_spawn_check_wait_status(status, NULL));
    const char *want[] = {
        "\"start\": 0, \"length\": 65536, \"depth\": 0, \"present\": true",
        "\"start\": 65536, \"length\": 983040, \"depth\": 1, \"present\": true",
        "\"start\": 1048576, \"length\": 262144, \"depth\": 0",
        "\"start\": 1310720, \"length\": 327680, \"depth\": 1",
        "\"start\": 1638400, \"length\": 458752, \"depth\": 0",
        "\"start\": 2097152, \"length\": 2097152, \"depth\": 1, "
        "\"present\": false",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(want); i++) {
        if (!strstr(out, want[i])) {
            fail_msg("qemu-img map lacks %s:\n%s", want[i], out);
        }
    }
    g_free(out);

    /* Reopened: still so. */
    blk = open_blk(top);
    check_pattern(blk, 64 * KiB, MiB - 64 * KiB, 0x11);
    check_pattern(blk, 2 * MiB, 2 * MiB, 0);
    blk_unref(blk);
    unlink(top);
    unlink(base);
    g_free(top);
    g_free(base);
}

/* Refusals: no write permission; a format that cannot (raw). */
static void test_refused(void **state)
{
    (void)state;
    char *img = make_qcow2("ro.qcow2", SIZE, NULL);
    GError *err = NULL;
    BlockBackend *blk = blk_new_open(img, json_pack("{s:s}", "driver",
                                                    "qcow2"), 0, &err);
    assert_non_null(blk);
    assert_int_equal(punch(blk, 0, MiB, NULL), -EPERM);
    blk_unref(blk);
    blk = blk_new_open(img, json_pack("{s:s}", "driver", "raw"), NODE_O_RDWR,
                       &err);
    assert_non_null(blk);
    assert_int_equal(punch(blk, 0, MiB, NULL), -ENOTSUP);
    blk_unref(blk);
    unlink(img);
    g_free(img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unallocate),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
