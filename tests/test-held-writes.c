/*
 * A write held in the file (a blkdebug breakpoint on its data write) must
 * not hold up writes it has nothing to do with: the guest latency rules of
 * issue 12, checked by order of events, never by time.
 *
 *   qcow2: an allocating write whose data write is held does not stop an
 *   allocating write to another cluster; a write into the held write's
 *   cluster waits for it (else its data would be lost when the held write
 *   links its cluster).
 *
 *   copy-on-read: while a background copy's (REQ_PREFETCH, the stream's)
 *   write is held, a write through the filter completes, and a second
 *   background copy waits in the filter instead of queueing its write in
 *   the file in front of later guest writes; a copy is written in pieces
 *   and keeps its turn across them.
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
#include "strata/copy-on-read.h"
#include "strata/coroutine.h"
#include "strata/loop.h"
#include "strata/units.h"
#include "support.h"

#define SIZE (8 * MiB)

/* qcow2 over blkdebug over the file, node-name "img" */
static json_t *qcow2_over_blkdebug(const char *path)
{
    return json_pack("{s:s, s:s, s:{s:s, s:{s:s, s:s}}}",
                     "driver", "qcow2", "node-name", "img",
                     "file", "driver", "blkdebug",
                     "image", "driver", "file", "filename", path);
}

/* ---- Requests in coroutines of their own ---- */

typedef struct Req {
    BlockBackend *blk;
    int64_t offset, bytes;
    int pattern;        /* a write's bytes; -1: a read */
    int flags;
    int ret;
    bool done;
} Req;

static void coroutine_fn req_co(void *opaque)
{
    Req *r = opaque;
    void *buf = g_malloc(r->bytes);
    IOVec q;

    iovec_init_buf(&q, buf, r->bytes);
    if (r->pattern >= 0) {
        memset(buf, r->pattern, r->bytes);
        r->ret = blk_co_pwritev(r->blk, r->offset, r->bytes, &q, r->flags);
    } else {
        r->ret = blk_co_preadv(r->blk, r->offset, r->bytes, &q, r->flags);
    }
    iovec_destroy(&q);
    g_free(buf);
    r->done = true;
}

static void start(Req *r, BlockBackend *blk, int64_t offset, int64_t bytes,
                  int pattern, int flags)
{
    *r = (Req){ .blk = blk, .offset = offset, .bytes = bytes,
                .pattern = pattern, .flags = flags, .ret = -EINPROGRESS };
    co_enter(co_create(req_co, r));
}

/* Is all of [off, off + len) allocated in bs itself (1) or none of it (0)? */
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

/* ---- blkdebug breakpoints on the image's file ---- */

static BlockNode *blkdebug_of(const char *node_name)
{
    BlockNode *img = node_find(node_name);
    assert_non_null(img);
    assert_non_null(img->file);
    assert_string_equal(img->file->bs->drv->format_name, "blkdebug");
    return img->file->bs;
}

static void hold_next_write(BlockNode *bd, const char *tag)
{
    assert_int_equal(bd->drv->debug_breakpoint(bd, "write_aio", tag), 0);
}

static bool held(BlockNode *bd, const char *tag)
{
    return bd->drv->debug_is_suspended(bd, tag);
}

static void resume(BlockNode *bd, const char *tag)
{
    assert_int_equal(bd->drv->debug_resume(bd, tag), 0);
}

/* ---- qcow2 ---- */

static void test_qcow2_alloc_not_serialised(void **state)
{
    (void)state;
    g_autofree char *p = make_qcow2("a.qcow2", SIZE, NULL);
    BlockBackend *blk = open_blk_json(qcow2_over_blkdebug(p));
    BlockNode *bd = blkdebug_of("img");
    Req w1, w2, w3;

    /* w1 allocates cluster 0 and is held at its data write. */
    hold_next_write(bd, "A");
    start(&w1, blk, 0, 64 * KiB, 0xaa, 0);
    LOOP_WAIT_WHILE(!held(bd, "A"));

    /* Another cluster: allocated, written and linked meanwhile. */
    start(&w2, blk, 1 * MiB, 64 * KiB, 0xbb, 0);
    LOOP_WAIT_WHILE(!w2.done);
    assert_int_equal(w2.ret, 0);
    assert_true(held(bd, "A"));
    assert_false(w1.done);

    /* Inside w1's cluster: must come after w1, not beside it. */
    start(&w3, blk, 4 * KiB, 4 * KiB, 0xcc, 0);
    resume(bd, "A");
    LOOP_WAIT_WHILE(!w1.done || !w3.done);
    assert_int_equal(w1.ret, 0);
    assert_int_equal(w3.ret, 0);

    check_pattern(blk, 0, 4 * KiB, 0xaa);
    check_pattern(blk, 4 * KiB, 4 * KiB, 0xcc);
    check_pattern(blk, 8 * KiB, 56 * KiB, 0xaa);
    check_pattern(blk, 1 * MiB, 64 * KiB, 0xbb);
    blk_unref(blk);

    /* And the image is consistent for qemu-img. */
    const char *argv[] = { "qemu-img", "check", "-q", p, NULL };
    int status;
    GError *err = NULL;
    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                      NULL, NULL, NULL, &status, &err)) {
        fail_msg("qemu-img: %s", err->message);
    }
    assert_true(g_spawn_check_wait_status(status, NULL));
    unlink(p);
}

/* ---- copy-on-read ---- */

/*
 * A base full of byte under a top, and a backend on a copy-on-read
 * filter cor_name over the top (qcow2 over blkdebug, node "img"); the
 * images' paths in *bp and *tp.
 */
static BlockBackend *open_cor_chain(const char *base, const char *top,
                                    int byte, const char *cor_name,
                                    char **bp, char **tp)
{
    *bp = make_qcow2(base, SIZE, NULL);
    BlockBackend *b = open_blk(*bp);
    write_pattern(b, 0, SIZE, byte);
    blk_unref(b);

    *tp = make_qcow2(top, SIZE, *bp);
    return open_blk_json(json_pack("{s:s, s:s, s:o}", "driver",
                                   "copy-on-read", "node-name", cor_name,
                                   "file", qcow2_over_blkdebug(*tp)));
}

static void test_cor_background_copies(void **state)
{
    (void)state;
    g_autofree char *bp = NULL, *tp = NULL;
    BlockBackend *blk = open_cor_chain("base.qcow2", "top.qcow2", 0x11, "cor", &bp, &tp);
    BlockNode *cor = blk_node(blk);
    BlockNode *bd = blkdebug_of("img");
    Req c1, c2, g;

    /*
     * A parent's write first: from it on, background copies take turns
     * (see test_cor_background_idle for a filter nobody writes through).
     */
    start(&g, blk, 6 * MiB, 4 * KiB, 0x66, 0);
    LOOP_WAIT_WHILE(!g.done);
    assert_int_equal(g.ret, 0);

    /* A background copy of 1 MiB: held at the write of its first piece. */
    hold_next_write(bd, "A");
    start(&c1, blk, 0, 1 * MiB, -1, REQ_PREFETCH);
    LOOP_WAIT_WHILE(!held(bd, "A"));

    /* A write through the filter, not overlapping: goes straight on. */
    start(&g, blk, 4 * MiB + 4 * KiB, 4 * KiB, 0x77, 0);
    LOOP_WAIT_WHILE(!g.done);
    assert_int_equal(g.ret, 0);
    assert_true(held(bd, "A"));

    /* A second copy waits for its turn in the filter, not in the file. */
    hold_next_write(bd, "B");
    start(&c2, blk, 2 * MiB, 1 * MiB, -1, REQ_PREFETCH);
    LOOP_WAIT_WHILE(cor_filter_background_waiting(cor) == 0 &&
                    !held(bd, "B"));
    assert_false(held(bd, "B"));

    /*
     * c1's second piece is the next write into the file ("B" holds it):
     * c1 keeps its turn, c2 still waits.
     */
    resume(bd, "A");
    LOOP_WAIT_WHILE(!held(bd, "B"));
    assert_false(c1.done);
    assert_int_equal(cor_filter_background_waiting(cor), 1);
    resume(bd, "B");
    LOOP_WAIT_WHILE(!c1.done || !c2.done);
    assert_int_equal(c1.ret, 0);
    assert_int_equal(c2.ret, 0);
    assert_int_equal(cor_filter_background_waiting(cor), 0);

    /* The copies are in top; the guest's write and its neighbours too. */
    BlockNode *img = node_find("img");
    BlockBackend *check = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    assert_true(blk_insert_node(check, img, NULL));
    expect_allocated(img, 0, 1 * MiB, 1);
    expect_allocated(img, 1 * MiB, 1 * MiB, 0);
    expect_allocated(img, 2 * MiB, 1 * MiB, 1);
    check_pattern(check, 0, 1 * MiB, 0x11);
    check_pattern(check, 2 * MiB, 1 * MiB, 0x11);
    check_pattern(check, 4 * MiB, 4 * KiB, 0x11);
    check_pattern(check, 4 * MiB + 4 * KiB, 4 * KiB, 0x77);
    check_pattern(check, 4 * MiB + 8 * KiB, 56 * KiB, 0x11);
    blk_unref(check);
    blk_unref(blk);
    unlink(tp);
    unlink(bp);
}

/*
 * Nobody writes through the filter: background copies go to the file at
 * once, side by side (a stream of an idle disk at full width), and whole.
 */
static void test_cor_background_idle(void **state)
{
    (void)state;
    g_autofree char *bp = NULL, *tp = NULL;
    BlockBackend *blk = open_cor_chain("base2.qcow2", "top2.qcow2", 0x22, "cor2", &bp, &tp);
    BlockNode *cor = blk_node(blk);
    BlockNode *bd = blkdebug_of("img");
    Req c1, c2;

    hold_next_write(bd, "A");
    start(&c1, blk, 0, 1 * MiB, -1, REQ_PREFETCH);
    LOOP_WAIT_WHILE(!held(bd, "A"));

    /* The second copy reaches the file while the first is still there. */
    hold_next_write(bd, "B");
    start(&c2, blk, 2 * MiB, 1 * MiB, -1, REQ_PREFETCH);
    LOOP_WAIT_WHILE(!held(bd, "B") &&
                    cor_filter_background_waiting(cor) == 0);
    assert_int_equal(cor_filter_background_waiting(cor), 0);
    assert_true(held(bd, "B"));
    assert_true(held(bd, "A"));

    /* Whole: one write each, so releasing it finishes the copy. */
    resume(bd, "B");
    LOOP_WAIT_WHILE(!c2.done);
    assert_int_equal(c2.ret, 0);
    resume(bd, "A");
    LOOP_WAIT_WHILE(!c1.done);
    assert_int_equal(c1.ret, 0);

    BlockNode *img = node_find("img");
    BlockBackend *check = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    assert_true(blk_insert_node(check, img, NULL));
    expect_allocated(img, 0, 1 * MiB, 1);
    expect_allocated(img, 2 * MiB, 1 * MiB, 1);
    check_pattern(check, 0, 1 * MiB, 0x22);
    check_pattern(check, 2 * MiB, 1 * MiB, 0x22);
    blk_unref(check);
    blk_unref(blk);
    unlink(tp);
    unlink(bp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qcow2_alloc_not_serialised),
        cmocka_unit_test(test_cor_background_copies),
        cmocka_unit_test(test_cor_background_idle),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
