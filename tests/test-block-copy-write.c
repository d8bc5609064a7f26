/*
 * The copy engine's options for a caller that writes data its own way
 * (strata-img convert): the write call-back gets every data chunk with
 * the bytes read, in place of the engine's write (and of copy offload);
 * its error is the call's, on the write side, the range marked again;
 * fixed_chunk makes every data chunk max_chunk from the first one.
 */
#include <errno.h>
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

#define LEN (5 * MiB + 4096)
#define CHUNK (1 * MiB)

/* What the write call-back saw; it keeps the bytes in `copy`. */
typedef struct Writer {
    uint8_t *copy;
    int64_t offsets[64], sizes[64];
    int calls;
    int64_t fail_at;         /* -1: never fail */
} Writer;

static int coroutine_fn on_write(void *opaque, int64_t offset, int64_t bytes,
                                 void *buf)
{
    Writer *w = opaque;
    assert_true(w->calls < 64);
    w->offsets[w->calls] = offset;
    w->sizes[w->calls] = bytes;
    w->calls++;
    if (offset == w->fail_at) {
        return -ENOSPC;
    }
    memcpy(w->copy + offset, buf, bytes);
    return 0;
}

typedef struct Setup {
    uint8_t *data;
    char *sp, *tp;
    BlockNode *src, *dst;
    BlockBackend *bsrc, *bdst;
    Writer w;
    BlockCopyOptions o;
} Setup;

static void setup_copy(Setup *t, bool fixed)
{
    t->data = g_malloc(LEN);
    for (size_t i = 0; i < LEN; i++) {
        t->data[i] = (uint8_t)(i * 7 + 1) | 1;
    }
    t->sp = make_file("src", t->data, LEN);
    t->tp = make_file("dst", NULL, LEN);
    t->src = open_file(t->sp);
    t->dst = open_file(t->tp);
    t->w = (Writer) { .copy = g_malloc0(LEN), .fail_at = -1 };
    t->o = (BlockCopyOptions) {
        .source = edge(&t->bsrc, t->src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&t->bdst, t->dst, BLK_PERM_WRITE),
        .granularity = 512,
        .max_chunk = CHUNK,
        .max_workers = 1,
        .use_copy_range = true,     /* the writer wins over offload */
        .write = on_write,
        .write_opaque = &t->w,
        .fixed_chunk = fixed,
    };
}

static void teardown_copy(Setup *t)
{
    blk_unref(t->bsrc);
    blk_unref(t->bdst);
    node_unref(t->src);
    node_unref(t->dst);
    g_free(t->data);
    g_free(t->w.copy);
    g_free(t->sp);
    g_free(t->tp);
}

static void test_writer_gets_every_chunk(void **state)
{
    Setup t;
    setup_copy(&t, true);
    BlockCopyState *s = new_copy(&t.o);
    Run r = { .s = s };
    BlockCopyStats st;
    gchar *target = NULL;
    gsize n = 0;

    co_run_sync(run_co, &r);
    assert_int_equal(r.ret, 0);
    /* fixed_chunk: 1 MiB chunks from the first, in order, a short tail. */
    assert_int_equal(t.w.calls, 6);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(t.w.offsets[i], (int64_t)i * CHUNK);
        assert_int_equal(t.w.sizes[i], CHUNK);
    }
    assert_int_equal(t.w.offsets[5], 5 * CHUNK);
    assert_int_equal(t.w.sizes[5], 4096);
    assert_memory_equal(t.w.copy, t.data, LEN);
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_read, LEN);
    assert_int_equal(st.bytes_offloaded, 0);
    /* The engine itself wrote nothing: the target is still a hole. */
    assert_true(g_file_get_contents(t.tp, &target, &n, NULL));
    assert_int_equal(n, LEN);
    for (gsize i = 0; i < n; i++) {
        if (target[i]) {
            fail_msg("the engine wrote the target at %zu", (size_t)i);
        }
    }
    g_free(target);
    block_copy_free(s);
    teardown_copy(&t);
}

static void test_ramp_without_fixed_chunk(void **state)
{
    Setup t;
    setup_copy(&t, false);
    BlockCopyState *s = new_copy(&t.o);
    Run r = { .s = s };

    co_run_sync(run_co, &r);
    assert_int_equal(r.ret, 0);
    /* Without it, chunks start at the granularity and double. */
    assert_int_equal(t.w.sizes[0], 512);
    assert_int_equal(t.w.sizes[1], 1024);
    assert_true(t.w.calls > 6);
    assert_memory_equal(t.w.copy, t.data, LEN);
    block_copy_free(s);
    teardown_copy(&t);
}

static void test_writer_error(void **state)
{
    Setup t;
    setup_copy(&t, true);
    t.w.fail_at = 2 * CHUNK;
    BlockCopyState *s = new_copy(&t.o);
    Run r = { .s = s };

    co_run_sync(run_co, &r);
    assert_int_equal(r.ret, -ENOSPC);
    assert_false(r.is_read);
    /* The failed chunk is marked again, and what was never taken. */
    assert_int_equal(dirty_bitmap_next_dirty(block_copy_bitmap(s), 0, LEN),
                     2 * CHUNK);
    assert_int_equal(block_copy_remaining(s), LEN - 2 * CHUNK);
    block_copy_free(s);
    teardown_copy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_gets_every_chunk),
        cmocka_unit_test(test_ramp_without_fixed_chunk),
        cmocka_unit_test(test_writer_error),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
