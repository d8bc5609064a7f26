/*
 * The copy engine's read call-back and length (strata-img convert: a disk
 * of several sources end to end, --salvage): the call-back gets every
 * data chunk to fill in place of the engine's read of the source (and of
 * copy offload), the copy may be longer than the source when the caller
 * also classifies and gives a bitmap that long, and a read error is the
 * call's, on the read side, the range marked again.
 */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
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
#include "strata/block-copy.h"
#include "strata/loop.h"
#include "strata/units.h"
#include "block-copy-fixture.h"
#include "support.h"

#define SRC_LEN ((int64_t)(1 * MiB))
#define LEN ((int64_t)(3 * MiB + 4096))
#define CHUNK ((int64_t)(1 * MiB))


/* The bytes of the caller's disk: none of them the source's. */
static uint8_t disk_byte(int64_t i)
{
    return (uint8_t)(i * 13 + 5) | 1;
}

typedef struct Caller {
    uint8_t *copy;
    int64_t read_offsets[64], read_sizes[64];
    int reads;
    int64_t fail_at;         /* -1: never fail */
} Caller;

static int coroutine_fn on_read(void *opaque, int64_t offset, int64_t bytes,
                                void *buf)
{
    Caller *c = opaque;
    uint8_t *p = buf;

    assert_true(c->reads < 64);
    c->read_offsets[c->reads] = offset;
    c->read_sizes[c->reads] = bytes;
    c->reads++;
    if (offset == c->fail_at) {
        return -EIO;
    }
    for (int64_t i = 0; i < bytes; i++) {
        p[i] = disk_byte(offset + i);
    }
    return 0;
}

static int coroutine_fn on_write(void *opaque, int64_t offset, int64_t bytes,
                                 void *buf)
{
    Caller *c = opaque;
    memcpy(c->copy + offset, buf, bytes);
    return 0;
}

typedef struct Setup {
    char *sp, *tp;
    BlockNode *src, *dst;
    BlockBackend *bsrc, *bdst;
    Caller c;
    BlockCopyOptions o;
} Setup;

static void setup_copy(Setup *t)
{
    GError *err = NULL;

    t->sp = make_file("src", NULL, SRC_LEN);
    t->tp = make_file("dst", NULL, LEN);
    t->src = open_file(t->sp);
    t->dst = open_file(t->tp);
    t->c = (Caller) { .copy = g_malloc0(LEN), .fail_at = -1 };
    t->o = (BlockCopyOptions) {
        .source = edge(&t->bsrc, t->src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&t->bdst, t->dst, BLK_PERM_WRITE),
        .max_chunk = CHUNK,
        .max_workers = 1,
        .fixed_chunk = true,
        .use_copy_range = true,     /* the reader wins over offload */
        .read = on_read,
        .read_opaque = &t->c,
        .write = on_write,
        .write_opaque = &t->c,
        .classify = all_data,
        .length = LEN,
    };
    /* The source is shorter than the copy: the bitmap lives on the
     * target, as convert's does. */
    t->o.bitmap = node_create_dirty_bitmap(t->dst, 512, NULL, &err);
    assert_non_null(t->o.bitmap);
    dirty_bitmap_set_enabled(t->o.bitmap, false);
    dirty_bitmap_set(t->o.bitmap, 0, LEN);
}

static void teardown_copy(Setup *t)
{
    dirty_bitmap_release(t->o.bitmap);
    blk_unref(t->bsrc);
    blk_unref(t->bdst);
    node_unref(t->src);
    node_unref(t->dst);
    g_free(t->c.copy);
    g_free(t->sp);
    g_free(t->tp);
}

static void test_reader_fills_every_chunk(void **state)
{
    Setup t;
    setup_copy(&t);
    BlockCopyState *s = new_copy(&t.o);
    Run r = { .s = s };
    BlockCopyStats st;

    co_run_sync(run_co, &r);
    assert_int_equal(r.ret, 0);
    /* Past the source's end, in order, fixed chunks, a short tail. */
    assert_int_equal(t.c.reads, 4);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(t.c.read_offsets[i], (int64_t)i * CHUNK);
        assert_int_equal(t.c.read_sizes[i], CHUNK);
    }
    assert_int_equal(t.c.read_offsets[3], 3 * CHUNK);
    assert_int_equal(t.c.read_sizes[3], 4096);
    for (int64_t i = 0; i < LEN; i++) {
        if (t.c.copy[i] != disk_byte(i)) {
            fail_msg("byte %" PRId64 " is not the reader's", i);
        }
    }
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_read, LEN);
    assert_int_equal(st.bytes_offloaded, 0);
    assert_int_equal(block_copy_remaining(s), 0);
    block_copy_free(s);
    teardown_copy(&t);
}

static void test_reader_error(void **state)
{
    Setup t;
    setup_copy(&t);
    t.c.fail_at = 2 * CHUNK;
    BlockCopyState *s = new_copy(&t.o);
    Run r = { .s = s };

    co_run_sync(run_co, &r);
    assert_int_equal(r.ret, -EIO);
    assert_true(r.is_read);
    assert_int_equal(dirty_bitmap_next_dirty(block_copy_bitmap(s), 0, LEN),
                     2 * CHUNK);
    assert_int_equal(block_copy_remaining(s), LEN - 2 * CHUNK);
    block_copy_free(s);
    teardown_copy(&t);
}

/* Longer than the source only with all three of read, classify, bitmap. */
static void test_length_needs_the_caller(void **state)
{
    Setup t;
    setup_copy(&t);
    BlockCopyOptions o;
    GError *err = NULL;

    o = t.o;
    o.read = NULL;
    assert_null(block_copy_new(&o, &err));
    assert_non_null(strstr(err->message, "does not fit the source"));
    g_clear_error(&err);
    o = t.o;
    o.classify = NULL;
    assert_null(block_copy_new(&o, &err));
    g_clear_error(&err);
    o = t.o;
    o.bitmap = NULL;
    assert_null(block_copy_new(&o, &err));
    g_clear_error(&err);
    o = t.o;
    o.length = -1;
    assert_null(block_copy_new(&o, &err));
    g_clear_error(&err);
    /* Within the source, a plain engine copy may set a length too. */
    o = t.o;
    o.read = NULL;
    o.write = NULL;
    o.classify = NULL;
    o.bitmap = NULL;
    o.length = SRC_LEN / 2;
    BlockCopyState *s = new_copy(&o);
    Run r = { .s = s };
    co_run_sync(run_co, &r);
    assert_int_equal(r.ret, 0);
    BlockCopyStats st;
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_read + st.bytes_zeroed + st.bytes_skipped +
                     st.bytes_offloaded, SRC_LEN / 2);
    block_copy_free(s);
    teardown_copy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reader_fills_every_chunk),
        cmocka_unit_test(test_reader_error),
        cmocka_unit_test(test_length_needs_the_caller),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
