/*
 * x-strata-discard-backing on the copy-on-read filter
 * (block/drivers/cor-discard.c), on base.qcow2 <- top.qcow2 (top over
 * blkdebug) with the filter over top:
 *
 *   - a copy leaves base only at the filter's flush, and what was read
 *     still reads the same;
 *   - a flush of top that fails drops nothing: the ranges wait for the
 *     next flush that works;
 *   - a range top no longer allocates when the flush comes stays in base;
 *   - base with another user: the filter does not open, base as it was.
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
#include "strata/block-driver.h"
#include "strata/block-ops.h"
#include "strata/coroutine.h"
#include "strata/units.h"
#include "support.h"

#define SIZE (8 * MiB)

static void expect_allocated(BlockNode *bs, int64_t off, int64_t len,
                             int want)
{
    while (len > 0) {
        int64_t pnum;
        assert_int_equal(node_is_allocated(bs, off, len, &pnum), want);
        assert_true(pnum > 0 && pnum <= len);
        off += pnum;
        len -= pnum;
    }
}

/*
 * base full of 0x11, top over it; a backend on the filter "cor" over top
 * ("img", over blkdebug with `rules` as its inject-error list, or none).
 */
static BlockBackend *open_chain(json_t *rules, char **bp, char **tp)
{
    *bp = make_qcow2("base.qcow2", SIZE, NULL);
    BlockBackend *b = open_blk(*bp);
    write_pattern(b, 0, SIZE, 0x11);
    blk_unref(b);
    *tp = make_qcow2("top.qcow2", SIZE, *bp);

    json_t *dbg = json_pack("{s:s, s:{s:s, s:s}}", "driver", "blkdebug",
                            "image", "driver", "file", "filename", *tp);
    if (rules) {
        json_object_set_new(dbg, "inject-error", rules);
    }
    return open_blk_json(json_pack(
        "{s:s, s:s, s:b, s:{s:s, s:s, s:o}}", "driver", "copy-on-read",
        "node-name", "cor", "x-strata-discard-backing", 1,
        "file", "driver", "qcow2", "node-name", "img", "file", dbg));
}

static BlockNode *base_node(void)
{
    BlockNode *base = node_backing(node_find("img"));
    assert_non_null(base);
    return base;
}

static void read_range(BlockBackend *blk, int64_t off, int64_t len)
{
    check_pattern(blk, off, len, 0x11);
}

static void close_chain(BlockBackend *blk, char *bp, char *tp)
{
    blk_unref(blk);
    unlink(tp);
    unlink(bp);
    g_free(tp);
    g_free(bp);
}

static void test_drop_at_flush(void **state)
{
    (void)state;
    char *bp, *tp;
    BlockBackend *blk = open_chain(NULL, &bp, &tp);
    BlockNode *base = base_node();

    /* Opened read-only as a backing file, made writable for the drops. */
    assert_false(node_is_read_only(base));
    read_range(blk, 0, 1 * MiB);
    read_range(blk, 3 * MiB + 4 * KiB, 8 * KiB);
    expect_allocated(node_find("img"), 0, 1 * MiB, 1);
    expect_allocated(base, 0, SIZE, 1);

    assert_int_equal(blk_flush(blk), 0);
    expect_allocated(base, 0, 1 * MiB, 0);
    expect_allocated(base, 1 * MiB, 2 * MiB, 1);
    /* the read's whole cluster was copied, and dropped */
    expect_allocated(base, 3 * MiB, 64 * KiB, 0);
    expect_allocated(base, 3 * MiB + 64 * KiB, SIZE - 3 * MiB - 64 * KiB, 1);
    read_range(blk, 0, SIZE);
    close_chain(blk, bp, tp);
}

static void test_failed_flush_keeps(void **state)
{
    (void)state;
    char *bp, *tp;
    json_t *rules = json_pack("[{s:s, s:s, s:i, s:b}]", "event",
                              "flush_to_disk", "iotype", "flush", "errno",
                              EIO, "once", 1);
    BlockBackend *blk = open_chain(rules, &bp, &tp);
    BlockNode *base = base_node();

    read_range(blk, 2 * MiB, 1 * MiB);
    assert_int_equal(blk_flush(blk), -EIO);
    expect_allocated(base, 0, SIZE, 1);
    /* the next flush works: what waited goes now */
    assert_int_equal(blk_flush(blk), 0);
    expect_allocated(base, 2 * MiB, 1 * MiB, 0);
    expect_allocated(base, 0, 2 * MiB, 1);
    expect_allocated(base, 3 * MiB, SIZE - 3 * MiB, 1);
    read_range(blk, 0, SIZE);
    close_chain(blk, bp, tp);
}

typedef struct Unalloc {
    BlockChild *c;
    int64_t off, len;
    int ret;
} Unalloc;

static void coroutine_fn unalloc_co(void *opaque)
{
    Unalloc *u = opaque;
    u->ret = child_co_unallocate(u->c, u->off, u->len, NULL);
}

static void test_unallocated_top_kept(void **state)
{
    (void)state;
    char *bp, *tp;
    BlockBackend *blk = open_chain(NULL, &bp, &tp);
    BlockNode *base = base_node();
    BlockBackend *w = NULL;

    read_range(blk, 0, 1 * MiB);
    /* Someone beside the filter makes top's first cluster fall through. */
    Unalloc u = { edge(&w, node_find("img"), BLK_PERM_WRITE), 0, 64 * KiB,
                  -1 };
    co_run_sync(unalloc_co, &u);
    assert_int_equal(u.ret, 0);
    blk_unref(w);
    expect_allocated(node_find("img"), 0, 64 * KiB, 0);

    assert_int_equal(blk_flush(blk), 0);
    expect_allocated(base, 0, 64 * KiB, 1);
    expect_allocated(base, 64 * KiB, 1 * MiB - 64 * KiB, 0);
    read_range(blk, 0, SIZE);
    close_chain(blk, bp, tp);
}

static void test_base_in_use(void **state)
{
    (void)state;
    g_autofree char *bp = make_qcow2("base.qcow2", SIZE, NULL);
    g_autofree char *tp = make_qcow2("top.qcow2", SIZE, bp);
    BlockNode *base = node_open(NULL, json_pack(
        "{s:s, s:s, s:b, s:{s:s, s:s}}", "driver", "qcow2", "node-name",
        "base", "read-only", 1, "file", "driver", "file", "filename", bp),
        0, NULL);
    assert_non_null(base);
    BlockBackend *user = backend_on(base, BLK_PERM_CONSISTENT_READ);
    GError *err = NULL;

    BlockNode *cor = node_open(NULL, json_pack(
        "{s:s, s:s, s:b, s:{s:s, s:s, s:s, s:{s:s, s:s}}}", "driver",
        "copy-on-read", "node-name", "cor", "x-strata-discard-backing", 1,
        "file", "driver", "qcow2", "node-name", "img", "backing", "base",
        "file", "driver", "file", "filename", tp), NODE_O_RDWR, &err);
    assert_null(cor);
    assert_non_null(err);
    assert_non_null(strstr(err->message, "needs the image 'base' to have "
                           "no other users than its overlay"));
    g_error_free(err);
    /* nothing left behind: base read-only, its only parent the user */
    assert_true(node_is_read_only(base));
    assert_null(node_find("img"));
    blk_unref(user);
    node_unref(base);
    unlink(tp);
    unlink(bp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drop_at_flush),
        cmocka_unit_test(test_failed_flush_keeps),
        cmocka_unit_test(test_unallocated_top_kept),
        cmocka_unit_test(test_base_in_use),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
