/*
 * Write-behind (strata/writeback.h): node_co_start_writeback finds the
 * page-cache files below a node and asks the kernel to write their dirty
 * pages; the copy engine's write_behind option asks every so many bytes
 * written to the target, and not at all when it is 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cmocka.h>
#include <glib.h>

#include "strata/backend.h"
#include "strata/block-copy.h"
#include "strata/create.h"
#include "strata/loop.h"
#include "strata/units.h"
#include "strata/writeback.h"
#include "support.h"

#define LEN (8 * MiB)

/* cachestat(2) (Linux 6.5): dirty pages of a file, or -1 if unknown. */
#if !defined(__NR_cachestat) && (defined(__x86_64__) || \
    defined(__aarch64__) || defined(__riscv))
#define __NR_cachestat 451
#endif

static int64_t dirty_pages(const char *p)
{
#ifdef __NR_cachestat
    struct { uint64_t off, len; } r = { 0, 0 };
    struct { uint64_t cache, dirty, writeback, evicted, recent; } cs;
    int fd = open(p, O_RDONLY);
    long ret;

    assert_true(fd >= 0);
    ret = syscall(__NR_cachestat, fd, &r, &cs, 0);
    close(fd);
    return ret == 0 ? (int64_t)cs.dirty : -1;
#else
    (void)p;
    return -1;
#endif
}

/* open_json with the open flags given (the support one opens read-write). */
static BlockNode *open_with(json_t *o, int flags)
{
    GError *err = NULL;
    BlockNode *bs = node_open(NULL, o, flags, &err);
    if (!bs) {
        fail_msg("open failed: %s", err->message);
    }
    return bs;
}

static BlockNode *open_cached_file(const char *p, bool direct)
{
    return open_with(json_pack("{s:s, s:s, s:{s:b}}", "driver", "file",
                               "filename", p, "cache", "direct", direct),
                     NODE_O_RDWR);
}

typedef struct Kick {
    BlockNode *bs;
    int n;
} Kick;

static void kick_co(void *opaque)
{
    Kick *k = opaque;
    k->n = node_co_start_writeback(k->bs);
}

static int kick(BlockNode *bs)
{
    Kick k = { .bs = bs, .n = -1 };
    co_run_sync(kick_co, &k);
    return k.n;
}

/* A writer's edge on bs, as a job holds one on its target. */
static int kick_written(BlockNode *bs)
{
    BlockBackend *blk;
    int n;

    edge(&blk, bs, BLK_PERM_WRITE);
    n = kick(bs);
    blk_unref(blk);
    return n;
}

/* Which nodes are asked: page-cache files under writers' edges only. */
static void test_which_files(void **state)
{
    g_autofree char *p = make_file("plain", NULL, MiB);
    g_autofree char *q = test_path("img.qcow2");
    GError *err = NULL;

    BlockNode *f = open_cached_file(p, false);
    assert_int_equal(kick(f), 1);
    node_unref(f);

    /* O_DIRECT: no dirty pages to write. */
    f = open_cached_file(p, true);
    assert_int_equal(kick(f), 0);
    node_unref(f);

    /* Read-only: nothing written through it. */
    f = open_with(json_pack("{s:s, s:s}", "driver", "file", "filename", p),
                  0);
    assert_int_equal(kick(f), 0);
    node_unref(f);

    /* No file at all. */
    f = open_with(json_pack("{s:s, s:I}", "driver", "null-co", "size",
                            (json_int_t)MiB), NODE_O_RDWR);
    assert_int_equal(kick(f), 0);
    node_unref(f);

    /* qcow2 over a file: down its file edge (it writes there). */
    if (!image_create("qcow2", q, json_pack("{s:I}", "size",
                                            (json_int_t)LEN), &err)) {
        fail_msg("create: %s", err->message);
    }
    f = open_with(json_pack("{s:s, s:{s:s, s:s}}", "driver", "qcow2",
                            "file", "driver", "file", "filename", q),
                  NODE_O_RDWR);
    assert_int_equal(kick_written(f), 1);
    node_unref(f);
}

typedef struct Run {
    BlockCopyState *s;
    int ret;
    bool is_read;
} Run;

static void run_co(void *opaque)
{
    Run *r = opaque;
    r->ret = block_copy_run(r->s, NULL, &r->is_read);
}

/* One copy of LEN bytes file -> file with the given write_behind (and
 * copy offload, checked to have copied it all): the number of requests;
 * the target's dirty pages after it in *dirty. */
static uint64_t copy_with(int64_t write_behind, bool offload, int64_t *dirty)
{
    uint8_t *data = g_malloc(LEN), *got;
    g_autofree char *sp = NULL, *tp = NULL;
    BlockBackend *bsrc, *bdst;
    BlockNode *src, *dst;
    GError *err = NULL;
    BlockCopyStats st;
    gsize n = 0;

    for (size_t i = 0; i < LEN; i++) {
        data[i] = (uint8_t)(i * 13 + 5) | 1;
    }
    sp = make_file("src", data, LEN);
    tp = make_file("dst", NULL, LEN);
    src = open_cached_file(sp, false);
    dst = open_cached_file(tp, false);
    BlockCopyOptions o = {
        .source = edge(&bsrc, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&bdst, dst, BLK_PERM_WRITE),
        .granularity = 64 * KiB,
        .max_chunk = MiB,
        .max_workers = 1,
        .write_behind = write_behind,
        .use_copy_range = offload,
    };
    BlockCopyState *s = block_copy_new(&o, &err);
    if (!s) {
        fail_msg("block_copy_new: %s", err->message);
    }
    Run r = { .s = s };
    co_run_sync(run_co, &r);
    assert_int_equal(r.ret, 0);
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_offloaded, offload ? LEN : 0);
    *dirty = dirty_pages(tp);
    block_copy_free(s);
    blk_unref(bsrc);
    blk_unref(bdst);
    node_unref(src);
    node_unref(dst);

    /* Write-behind changes when the bytes reach the disk, not which. */
    assert_true(g_file_get_contents(tp, (gchar **)&got, &n, NULL));
    assert_int_equal(n, LEN);
    assert_memory_equal(got, data, LEN);
    g_free(got);
    g_free(data);
    return st.writeback_kicks;
}

static void test_engine_asks_every_so_often(void **state)
{
    int64_t dirty;
    long page = sysconf(_SC_PAGESIZE);

    /*
     * 8 MiB in chunks of 64 KiB, 128 KiB ... 1 MiB (one worker): a request
     * each time 1 MiB more is written, the bytes past the last request
     * left to the kernel.
     */
    for (int offload = 0; offload < 2; offload++) {
        /* copy_file_range fills the target's page cache as writes do. */
        uint64_t kicks = copy_with(MiB, offload, &dirty);
        assert_true(kicks >= 6 && kicks <= 8);
        if (dirty >= 0) {
            /* Written or being written: at most what came after the last
             * request (under 2 MiB) is still only dirty. */
            assert_true(dirty * page < (int64_t)(2 * MiB));
        }
    }
}

static void test_off_when_zero(void **state)
{
    int64_t dirty;

    assert_int_equal(copy_with(0, false, &dirty), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_which_files),
        cmocka_unit_test(test_engine_asks_every_so_often),
        cmocka_unit_test(test_off_when_zero),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
