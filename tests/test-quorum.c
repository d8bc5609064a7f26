/*
 * The quorum driver through the library: children given as names of
 * nodes already open (what qemu-io cannot express, QEMU's iotest 081
 * does over QMP), mixed with definitions; the edges are "children.N" in
 * the order given; the vote outvotes a corrupted child and
 * rewrite-corrupted repairs it through the referenced node; many
 * requests in flight at once each get their own vote; a node name left
 * dangling fails with QEMU's message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/block.h"
#include "strata/coroutine.h"
#include "strata/loop.h"
#include "strata/units.h"
#include "support.h"

#define SIZE (256 * KiB)

/* A writable file node called `node_name`. */
static BlockNode *open_named(const char *file, const char *node_name)
{
    json_t *o = json_pack("{s:s, s:s, s:s}", "driver", "file",
                          "filename", file, "node-name", node_name);
    GError *err = NULL;
    BlockNode *bs = node_open(NULL, o, NODE_O_RDWR, &err);

    if (!bs) {
        fail_msg("opening %s: %s", file, err->message);
    }
    return bs;
}

static BlockBackend *open_quorum(json_t *o, GError **errp)
{
    json_object_set_new(o, "driver", json_string("quorum"));
    return blk_new_open(NULL, o, NODE_O_RDWR, errp);
}

static void test_references(void **state)
{
    BlockNode *n1, *n2;
    BlockBackend *blk;
    GError *err = NULL;
    guint8 buf[4096];
    guint8 *data;

    g_free(make_filled("a", 0x11, SIZE));
    g_free(make_filled("b", 0x11, SIZE));
    g_free(make_filled("c", 0x11, SIZE));
    /* b differs in its first 4 KiB. */
    memset(buf, 0x33, sizeof(buf));
    data = read_file("b", SIZE);
    memcpy(data, buf, sizeof(buf));
    assert_true(g_file_set_contents("b", (gchar *)data, SIZE, NULL));
    g_free(data);

    n1 = open_named("a", "n1");
    n2 = open_named("b", "n2");
    blk = open_quorum(json_pack("{s:i, s:b, s:[s, s, {s:s, s:s}]}",
                                "vote-threshold", 2,
                                "rewrite-corrupted", 1,
                                "children", "n1", "n2",
                                "driver", "file", "filename", "c"),
                      &err);
    if (!blk) {
        fail_msg("opening the quorum: %s", err->message);
    }

    /* The edges, in the order given, name the referenced nodes. */
    BlockNode *q = blk_node(blk);
    assert_ptr_equal(node_find_child(q, "children.0")->bs, n1);
    assert_ptr_equal(node_find_child(q, "children.1")->bs, n2);
    assert_non_null(node_find_child(q, "children.2"));
    assert_null(node_find_child(q, "children.3"));
    assert_int_equal(blk_getlength(blk), SIZE);

    /* The read is outvoted ... */
    assert_int_equal(blk_pread(blk, 0, sizeof(buf), buf, 0), 0);
    for (size_t i = 0; i < sizeof(buf); i++) {
        assert_int_equal(buf[i], 0x11);
    }
    blk_unref(blk);

    /* ... and b, written through the node n2, repaired. */
    data = read_file("b", SIZE);
    for (size_t i = 0; i < SIZE; i++) {
        assert_int_equal(data[i], 0x11);
    }
    g_free(data);

    /* The referenced nodes outlive the quorum. */
    assert_ptr_equal(node_find("n1"), n1);
    node_unref(n1);
    node_unref(n2);
}

static void test_dangling_reference(void **state)
{
    GError *err = NULL;
    BlockBackend *blk;

    g_free(make_filled("a", 0x11, SIZE));
    blk = open_quorum(json_pack("{s:i, s:[{s:s, s:s}, s]}",
                                "vote-threshold", 1, "children",
                                "driver", "file", "filename", "a", "nope"),
                      &err);
    assert_null(blk);
    assert_string_equal(err->message,
                        "Cannot find device='nope' nor node-name='nope'");
    g_error_free(err);
    /* The child opened before the failure is gone with the quorum. */
    assert_null(node_find("nope"));
}

/*
 * Requests in flight together: each child of each request finishes in
 * its own time (thread pool), and every request must get its own vote.
 */
typedef struct {
    BlockBackend *blk;
    int64_t offset;
    int fill;
    int ret;
    bool done;
} Req;

static void coroutine_fn write_then_read(void *opaque)
{
    Req *r = opaque;
    guint8 *buf = g_malloc(16 * KiB);
    IOVec v;

    memset(buf, r->fill, 16 * KiB);
    iovec_init_buf(&v, buf, 16 * KiB);
    r->ret = blk_co_pwritev(r->blk, r->offset, 16 * KiB, &v, 0);
    if (r->ret == 0) {
        memset(buf, 0, 16 * KiB);
        r->ret = blk_co_preadv(r->blk, r->offset, 16 * KiB, &v, 0);
        for (size_t i = 0; r->ret == 0 && i < 16 * KiB; i++) {
            if (buf[i] != r->fill) {
                r->ret = -EILSEQ;
            }
        }
    }
    iovec_destroy(&v);
    g_free(buf);
    r->done = true;
}

static void test_concurrent(void **state)
{
    GError *err = NULL;
    BlockBackend *blk;
    Req reqs[16];

    g_free(make_filled("a", 0, SIZE));
    g_free(make_filled("b", 0, SIZE));
    g_free(make_filled("c", 0, SIZE));
    blk = open_quorum(json_pack("{s:s, s:[{s:s, s:s, s:s}, {s:s, s:s, s:s},"
                                " {s:s, s:s, s:s}]}",
                                "vote-threshold", "3", "children",
                                "driver", "file", "filename", "a",
                                "aio", "threads",
                                "driver", "file", "filename", "b",
                                "aio", "threads",
                                "driver", "file", "filename", "c",
                                "aio", "threads"),
                      &err);
    if (!blk) {
        fail_msg("opening the quorum: %s", err->message);
    }
    for (int i = 0; i < 16; i++) {
        reqs[i] = (Req){ blk, i * 16 * KiB, 0x40 + i, 0, false };
        co_enter(co_create(write_then_read, &reqs[i]));
    }
    for (int i = 0; i < 16; i++) {
        LOOP_WAIT_WHILE(!reqs[i].done);
        assert_int_equal(reqs[i].ret, 0);
    }
    blk_unref(blk);
    const char *names[] = { "a", "b", "c" };
    for (int f = 0; f < 3; f++) {
        guint8 *data = read_file(names[f], SIZE);
        for (size_t i = 0; i < SIZE; i++) {
            assert_int_equal(data[i], 0x40 + i / (16 * KiB));
        }
        g_free(data);
    }
}

static int setup(void **state)
{
    if (test_tmpdir_setup(state) != 0) {
        return -1;
    }
    /* The nodes' file names are relative. */
    test_tmpdir_enter();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_references),
        cmocka_unit_test(test_dangling_reference),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests(tests, setup, test_tmpdir_teardown);
}
