/*
 * The copy engine (jobs/block-copy.c) on raw files in a temporary folder,
 * null-co nodes (latency-ns makes requests wait in the loop, so chunks
 * really overlap) and blkdebug nodes that inject errors: whole copies,
 * zero and skip ranges, errors on either side, a recording bitmap marked
 * during the copy, the in-flight and memory limits, the dirty bitmap
 * calls, read-only mode, compressed writes, copy offload and its core
 * call.  Copy-before-write ranges against the background copy:
 * test-block-copy-range.c; the engine under a job: test-block-copy-job.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <glib.h>

#include "strata/backend.h"
#include "strata/block-copy.h"
#include "strata/block-driver.h"
#include "strata/copy-range.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "strata/units.h"
#include "block-copy-fixture.h"
#include "support.h"

/* ---- Whole copies ---- */

static void test_full_copy_equal(void **state)
{
    /* Not a multiple of the granularity: the last granule is short. */
    const size_t len = 4 * MiB + 12288;
    uint8_t *data = g_malloc(len);
    fill_nonzero(data, len, 1);
    g_autofree char *sp = make_file("src", data, len);
    g_autofree char *tp = make_file("dst", NULL, len);
    BlockNode *src = open_file(sp), *dst = open_file(tp);
    Edges e;
    Seen seen = { { 0 } };
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .progress = on_progress, .progress_opaque = &seen,
    };
    BlockCopyState *s = new_copy(&o);
    BlockCopyStats st;

    assert_int_equal(block_copy_granularity(s), GRAN);
    assert_int_equal(block_copy_remaining(s), len);
    assert_int_equal(run_sync(s, NULL), 0);
    assert_int_equal(block_copy_remaining(s), 0);
    assert_int_equal(block_copy_in_flight(s), 0);
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_read, len);
    assert_int_equal(st.bytes_written, len);
    assert_int_equal(st.bytes_zeroed + st.bytes_skipped, 0);
    assert_int_equal(seen.bytes[BLOCK_COPY_DATA], len);
    /* Chunks grew past the granularity: fewer chunks than granules. */
    assert_true(st.chunks < len / GRAN);
    /* A second run finds nothing to do. */
    assert_int_equal(run_sync(s, NULL), 0);
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_read, len);
    copy_close(s, &e, src, dst);

    expect_file(tp, data, len);
    g_free(data);
}

static void record_sizes(void *opaque, int64_t offset, int64_t bytes,
                         BlockCopyKind kind)
{
    g_array_append_val((GArray *)opaque, bytes);
}

/* Chunks start at the granularity and double up to max_chunk. */
static void test_chunk_growth(void **state)
{
    const size_t len = 4 * MiB;
    uint8_t *data = g_malloc(len);
    fill_nonzero(data, len, 16);
    g_autofree char *sp = make_file("gsrc", data, len);
    g_autofree char *tp = make_file("gdst", NULL, len);
    BlockNode *src = open_file(sp), *dst = open_file(tp);
    GArray *sizes = g_array_new(FALSE, FALSE, sizeof(int64_t));
    Edges e;
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .max_chunk = MiB,
        .max_workers = 1,        /* each chunk ends before the next starts */
        .progress = record_sizes, .progress_opaque = sizes,
    };
    BlockCopyState *s = new_copy(&o);
    const int64_t expect[] = {
        64 * KiB, 128 * KiB, 256 * KiB, 512 * KiB, MiB, MiB, MiB, 64 * KiB,
    };

    assert_int_equal(run_sync(s, NULL), 0);
    assert_int_equal(sizes->len, G_N_ELEMENTS(expect));
    for (guint i = 0; i < sizes->len; i++) {
        assert_int_equal(g_array_index(sizes, int64_t, i), expect[i]);
    }
    g_array_free(sizes, TRUE);
    copy_close(s, &e, src, dst);
    expect_file(tp, data, len);
    g_free(data);
}

/* Holes in the source are zero writes on the target, not data. */
static void test_zero_ranges(void **state)
{
    const size_t len = 2 * MiB;
    uint8_t *data = g_malloc0(len);
    /* Data in [0, 256K) and [1M, 1M + 128K); the rest is a hole. */
    fill_nonzero(data, 256 * KiB, 2);
    fill_nonzero(data + MiB, 128 * KiB, 3);
    g_autofree char *sp = test_path("zsrc");
    int fd = open(sp, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, len), 0);
    assert_int_equal(pwrite(fd, data, 256 * KiB, 0), 256 * KiB);
    assert_int_equal(pwrite(fd, data + MiB, 128 * KiB, MiB), 128 * KiB);
    close(fd);

    for (int mode = 0; mode < 2; mode++) {
        /* The target starts out full of other data. */
        uint8_t *junk = g_malloc(len);
        fill_nonzero(junk, len, 9);
        g_autofree char *tp = make_file("zdst", junk, len);
        g_free(junk);
        BlockNode *src = open_file(sp), *dst = open_file(tp);
        Edges e;
        Seen seen = { { 0 } };
        BlockCopyOptions o = {
            .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
            .target = edge(&e.dst, dst, BLK_PERM_WRITE),
            .unmap = mode == 1,
            /* One at a time, chunks grow and then straddle data and hole:
             * the hole part goes back to the bitmap and comes as zeroes. */
            .max_workers = mode == 0 ? 1 : 0,
            .progress = on_progress, .progress_opaque = &seen,
        };
        BlockCopyState *s = new_copy(&o);
        BlockCopyStats st;

        assert_int_equal(run_sync(s, NULL), 0);
        block_copy_get_stats(s, &st);
        assert_int_equal(st.bytes_written, 384 * KiB);
        assert_int_equal(st.bytes_read, 384 * KiB);
        assert_int_equal(st.bytes_zeroed, len - 384 * KiB);
        assert_int_equal(seen.bytes[BLOCK_COPY_ZERO], len - 384 * KiB);
        assert_int_equal(seen.bytes[BLOCK_COPY_DATA], 384 * KiB);
        copy_close(s, &e, src, dst);
        expect_file(tp, data, len);
    }
    g_free(data);
}

/* A target that reads zeroes gets no zero writes at all. */
static void test_target_reads_zeroes(void **state)
{
    const size_t len = MiB;
    uint8_t *data = g_malloc0(len);
    fill_nonzero(data + 512 * KiB, 64 * KiB, 4);
    g_autofree char *sp = make_file("rzsrc", NULL, len);
    int fd = open(sp, O_WRONLY);
    assert_int_equal(pwrite(fd, data + 512 * KiB, 64 * KiB, 512 * KiB),
                     64 * KiB);
    close(fd);
    g_autofree char *tp = make_file("rzdst", NULL, len);
    BlockNode *src = open_file(sp), *dst = open_file(tp);
    Edges e;
    Seen seen = { { 0 } };
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .target_reads_zeroes = true,
        .progress = on_progress, .progress_opaque = &seen,
    };
    BlockCopyState *s = new_copy(&o);
    BlockCopyStats st;

    assert_int_equal(run_sync(s, NULL), 0);
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_zeroed, 0);
    assert_int_equal(st.bytes_written, 64 * KiB);
    assert_int_equal(st.bytes_skipped, len - 64 * KiB);
    assert_int_equal(seen.bytes[BLOCK_COPY_ZERO], len - 64 * KiB);
    /* Each hole in one piece, not chunk by chunk. */
    assert_int_equal(st.chunks, 3);
    copy_close(s, &e, src, dst);
    expect_file(tp, data, len);
    g_free(data);
}

/* The caller's classify: the first half is "nothing to copy". */
static int coroutine_fn skip_first_half(void *opaque, int64_t offset,
                                        int64_t bytes, int64_t *pnum)
{
    int64_t half = *(int64_t *)opaque;
    if (offset < half) {
        *pnum = MIN(bytes, half - offset);
        return BLOCK_COPY_SKIP;
    }
    *pnum = bytes;
    return BLOCK_COPY_DATA;
}

static void test_skip_classify(void **state)
{
    const size_t len = 2 * MiB;
    int64_t half = len / 2;
    uint8_t *data = g_malloc(len), *junk = g_malloc(len);
    fill_nonzero(data, len, 5);
    fill_nonzero(junk, len, 6);
    g_autofree char *sp = make_file("ssrc", data, len);
    g_autofree char *tp = make_file("sdst", junk, len);
    BlockNode *src = open_file(sp), *dst = open_file(tp);
    Edges e;
    Seen seen = { { 0 } };
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .classify = skip_first_half, .classify_opaque = &half,
        .progress = on_progress, .progress_opaque = &seen,
    };
    BlockCopyState *s = new_copy(&o);
    BlockCopyStats st;

    assert_int_equal(run_sync(s, NULL), 0);
    assert_int_equal(block_copy_remaining(s), 0);
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_skipped, half);
    assert_int_equal(st.bytes_read, half);
    assert_int_equal(seen.bytes[BLOCK_COPY_SKIP], half);
    assert_int_equal(seen.bytes[BLOCK_COPY_DATA], half);
    copy_close(s, &e, src, dst);
    uint8_t *out = read_file(tp, len);
    assert_memory_equal(out, junk, half);
    assert_memory_equal(out + half, data + half, len - half);
    g_free(out);
    g_free(data);
    g_free(junk);
}

/* ---- Errors ---- */

static void error_case(bool on_read)
{
    const size_t len = 2 * MiB;
    const int64_t bad = 1536 * KiB + 4096;   /* inside granule 24 */
    uint8_t *data = g_malloc(len);
    fill_nonzero(data, len, 7);
    g_autofree char *sp = make_file("esrc", data, len);
    g_autofree char *tp = make_file("edst", NULL, len);
    BlockNode *src = on_read ? open_blkdebug(sp, "read", bad)
                             : open_file(sp);
    BlockNode *dst = on_read ? open_file(tp)
                             : open_blkdebug(tp, "write", bad);
    Edges e;
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .max_chunk = GRAN,       /* one granule per chunk: exact ranges */
    };
    BlockCopyState *s = new_copy(&o);
    bool is_read = !on_read;

    assert_int_equal(run_sync(s, &is_read), -EIO);
    assert_int_equal(is_read, on_read);
    assert_int_equal(block_copy_in_flight(s), 0);
    /* The failed granule is marked again; everything before it is done. */
    assert_true(dirty_bitmap_get(block_copy_bitmap(s), bad));
    assert_true(block_copy_remaining(s) >= GRAN);
    /* The rule fired once: calling again finishes the copy. */
    assert_int_equal(run_sync(s, NULL), 0);
    assert_int_equal(block_copy_remaining(s), 0);
    copy_close(s, &e, src, dst);
    expect_file(tp, data, len);
    g_free(data);
}

static void test_read_error(void **state)
{
    error_case(true);
}

static void test_write_error(void **state)
{
    error_case(false);
}

/* ---- A recording bitmap ---- */

typedef struct Writer {
    BlockChild *src_w;       /* a writer of the source */
    int64_t trigger;         /* classify at this offset writes ... */
    int64_t at;              /* ... here, once */
    uint8_t *data;
    bool written;
} Writer;

static int coroutine_fn write_during_copy(void *opaque, int64_t offset,
                                          int64_t bytes, int64_t *pnum)
{
    Writer *w = opaque;
    if (!w->written && offset >= w->trigger) {
        w->written = true;
        fill_nonzero(w->data + w->at, GRAN, 42);
        assert_int_equal(child_co_pwrite(w->src_w, w->at, GRAN,
                                         w->data + w->at, 0), 0);
    }
    *pnum = bytes;
    return BLOCK_COPY_DATA;
}

static void test_recording_bitmap(void **state)
{
    const size_t len = 2 * MiB;
    uint8_t *data = g_malloc(len);
    fill_nonzero(data, len, 8);
    g_autofree char *sp = make_file("rsrc", data, len);
    g_autofree char *tp = make_file("rdst", NULL, len);
    BlockNode *src = open_file(sp), *dst = open_file(tp);
    BlockBackend *wblk;
    Edges e;
    GError *err = NULL;
    DirtyBitmap *bm = node_create_dirty_bitmap(src, GRAN, NULL, &err);
    assert_non_null(bm);
    dirty_bitmap_set(bm, 0, len);
    Writer w = {
        .src_w = edge(&wblk, src, BLK_PERM_WRITE),
        .trigger = MiB, .at = 0, .data = data,
    };
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .bitmap = bm,
        .max_workers = 1,        /* granule 0 is done when the write comes */
        .classify = write_during_copy, .classify_opaque = &w,
    };
    BlockCopyState *s = new_copy(&o);
    BlockCopyStats st;

    assert_ptr_equal(block_copy_bitmap(s), bm);
    assert_int_equal(run_sync(s, NULL), 0);
    assert_true(w.written);
    assert_int_equal(dirty_bitmap_count(bm), 0);
    block_copy_get_stats(s, &st);
    /* Everything once, and the rewritten granule a second time. */
    assert_int_equal(st.bytes_written, len + GRAN);
    block_copy_free(s);
    /* The caller's bitmap outlives the engine. */
    assert_int_equal(dirty_bitmap_granularity(bm), GRAN);
    dirty_bitmap_release(bm);
    blk_unref(wblk);
    blk_unref(e.src);
    blk_unref(e.dst);
    node_unref(src);
    node_unref(dst);
    expect_file(tp, data, len);
    g_free(data);
}

/* ---- Limits ---- */

static void test_limits(void **state)
{
    const int64_t len = 64 * MiB;
    BlockNode *src = open_null(len, 200000), *dst = open_null(len, 100000);
    Edges e;
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .max_chunk = 256 * KiB,
        .max_memory = 3 * 256 * KiB,
        .max_workers = 5,
    };
    BlockCopyState *s = new_copy(&o);
    BlockCopyStats st;

    assert_int_equal(run_sync(s, NULL), 0);
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_written, len);
    assert_true(st.peak_in_flight <= 5);
    /* Several chunks really were in flight at once. */
    assert_true(st.peak_in_flight > 1);
    assert_true(st.peak_memory <= 3 * 256 * KiB);
    assert_true(st.peak_memory > 256 * KiB);
    block_copy_free(s);

    /* Options that cannot work. */
    GError *err = NULL;
    BlockCopyOptions bad = o;
    bad.granularity = 3000;
    assert_null(block_copy_new(&bad, &err));
    assert_non_null(strstr(err->message, "granularity 3000"));
    g_clear_error(&err);
    bad = o;
    bad.max_memory = 128 * KiB;
    assert_null(block_copy_new(&bad, &err));
    assert_non_null(strstr(err->message, "memory budget"));
    g_clear_error(&err);
    /* A small budget and the default chunk: the chunk fits the budget. */
    BlockCopyOptions small = o;
    small.max_chunk = 0;
    small.max_memory = 192 * KiB;
    s = new_copy(&small);
    assert_int_equal(run_sync(s, NULL), 0);
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_written, len);
    assert_true(st.peak_memory <= 192 * KiB);
    block_copy_free(s);
    bad = o;
    bad.max_memory = 4096;
    assert_null(block_copy_new(&bad, &err));
    assert_non_null(strstr(err->message, "memory budget 4096"));
    g_clear_error(&err);
    bad = o;
    bad.max_chunk = 4096;
    assert_null(block_copy_new(&bad, &err));
    assert_non_null(strstr(err->message, "max chunk"));
    g_clear_error(&err);

    blk_unref(e.src);
    blk_unref(e.dst);
    node_unref(src);
    node_unref(dst);
}

static void test_dirty_api(void **state)
{
    BlockNode *src = open_null(MiB + 1000, 0);
    /* null-co's length is whole sectors. */
    const int64_t len = node_getlength(src), tail = len - MiB;
    Edges e;
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .start_clean = true,
    };
    BlockCopyState *s = new_copy(&o);

    assert_int_equal(block_copy_remaining(s), 0);
    /* set rounds out to granules; the last one is clipped at the end. */
    block_copy_set_dirty(s, 100, 10);
    assert_int_equal(block_copy_remaining(s), GRAN);
    block_copy_set_dirty(s, len - 1, 1);
    assert_int_equal(block_copy_remaining(s), GRAN + tail);
    /* reset rounds in: a partial granule stays marked. */
    block_copy_reset_dirty(s, 0, GRAN - 1);
    assert_int_equal(block_copy_remaining(s), GRAN + tail);
    block_copy_reset_dirty(s, 0, GRAN);
    assert_int_equal(block_copy_remaining(s), tail);
    block_copy_reset_dirty(s, MiB, tail);
    assert_int_equal(block_copy_remaining(s), 0);
    /* The engine's own bitmap does not record writes. */
    assert_false(dirty_bitmap_enabled(block_copy_bitmap(s)));
    block_copy_free(s);
    blk_unref(e.src);
    node_unref(src);
}

/* ---- Modes ---- */

/* No target: reads for their side effect only. */
static void test_read_only_mode(void **state)
{
    const size_t len = MiB;
    uint8_t *data = g_malloc(len);
    fill_nonzero(data, len, 11);
    g_autofree char *sp = make_file("rosrc", data, len);
    BlockNode *src = open_file(sp);
    Edges e;
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
    };
    BlockCopyState *s = new_copy(&o);
    BlockCopyStats st;

    assert_int_equal(run_sync(s, NULL), 0);
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_read, len);
    assert_int_equal(st.bytes_written, 0);
    assert_int_equal(block_copy_remaining(s), 0);
    block_copy_free(s);
    blk_unref(e.src);
    node_unref(src);
    g_free(data);
}

static void test_compress(void **state)
{
    const size_t len = 2 * MiB;
    uint8_t *data = g_malloc(len);
    /* Compressible: runs of one byte value. */
    for (size_t i = 0; i < len; i++) {
        data[i] = (uint8_t)(1 + i / 4096);
    }
    g_autofree char *sp = make_file("csrc2", data, len);
    g_autofree char *tp = test_path("cdst.qcow2");
    GError *err = NULL;
    if (!image_create("qcow2", tp, json_pack("{s:i}", "size", (int)len),
                      &err)) {
        fail_msg("create: %s", err->message);
    }
    BlockNode *src = open_file(sp);
    BlockNode *dst = open_json(json_pack("{s:s, s:{s:s, s:s}}",
                                         "driver", "qcow2", "file",
                                         "driver", "file", "filename", tp));
    Edges e;
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .compress = true,
    };
    BlockCopyState *s = new_copy(&o);
    BlockCopyStats st;

    assert_int_equal(block_copy_granularity(s), 64 * KiB);
    /* Less than a cluster cannot be written compressed. */
    BlockCopyOptions bad = o;
    bad.granularity = 4096;
    assert_null(block_copy_new(&bad, &err));
    assert_non_null(strstr(err->message, "whole clusters"));
    g_clear_error(&err);
    assert_int_equal(run_sync(s, NULL), 0);
    block_copy_get_stats(s, &st);
    /* One chunk per cluster: compressed writes are whole clusters. */
    assert_int_equal(st.chunks, len / (64 * KiB));
    assert_int_equal(st.bytes_written, len);
    copy_close(s, &e, src, dst);

    /* Read back through qcow2; the file holds far less than the data. */
    BlockNode *rd = open_json(json_pack("{s:s, s:{s:s, s:s}}",
                                        "driver", "qcow2", "file",
                                        "driver", "file", "filename", tp));
    BlockBackend *rblk;
    BlockChild *r = edge(&rblk, rd, BLK_PERM_CONSISTENT_READ);
    (void)r;
    uint8_t *out = g_malloc(len);
    assert_int_equal(blk_pread(rblk, 0, len, out, 0), 0);
    assert_memory_equal(out, data, len);
    struct stat sb;
    assert_int_equal(stat(tp, &sb), 0);
    assert_true((size_t)sb.st_size < len / 4);
    blk_unref(rblk);
    node_unref(rd);
    g_free(out);
    g_free(data);
}

/* ---- Copy offload ---- */

static BlockNode *open_raw_file(const char *p)
{
    return open_json(json_pack("{s:s, s:{s:s, s:s}}", "driver", "raw",
                               "file", "driver", "file", "filename", p));
}

/* raw over file to raw over file, and file to file: copy_file_range. */
static void test_offload(void **state)
{
    const size_t len = 4 * MiB + 12288;
    uint8_t *data = g_malloc(len);
    fill_nonzero(data, len, 13);
    g_autofree char *sp = make_file("osrc", data, len);

    for (int raw = 0; raw < 2; raw++) {
        g_autofree char *tp = make_file("odst", NULL, len);
        BlockNode *src = raw ? open_raw_file(sp) : open_file(sp);
        BlockNode *dst = raw ? open_raw_file(tp) : open_file(tp);
        Edges e;
        GError *err = NULL;
        /* A recording bitmap on the target sees the offloaded writes. */
        DirtyBitmap *tbm = node_create_dirty_bitmap(dst, GRAN, NULL, &err);
        assert_non_null(tbm);
        BlockCopyOptions o = {
            .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
            .target = edge(&e.dst, dst, BLK_PERM_WRITE),
            .use_copy_range = true,
        };
        BlockCopyState *s = new_copy(&o);
        BlockCopyStats st;

        assert_int_equal(run_sync(s, NULL), 0);
        block_copy_get_stats(s, &st);
        assert_int_equal(st.bytes_offloaded, len);
        assert_int_equal(st.bytes_read, 0);
        assert_int_equal(st.bytes_written, 0);
        assert_int_equal(st.peak_memory, 0);
        assert_int_equal(dirty_bitmap_count(tbm), ROUND_UP(len, GRAN));
        dirty_bitmap_release(tbm);
        copy_close(s, &e, src, dst);
        expect_file(tp, data, len);
    }
    g_free(data);
}

/* A node on the way that cannot pass offload on: read and write. */
static void test_offload_fallback(void **state)
{
    const size_t len = MiB;
    uint8_t *data = g_malloc(len);
    fill_nonzero(data, len, 14);
    g_autofree char *sp = make_file("fsrc", data, len);
    g_autofree char *tp = make_file("fdst", NULL, len);
    BlockNode *src = open_file(sp);
    /* blkdebug with a rule that never matches: a filter without offload. */
    BlockNode *dst = open_blkdebug(tp, "write", 2 * len);
    Edges e;
    BlockCopyOptions o = {
        .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, dst, BLK_PERM_WRITE),
        .use_copy_range = true,
    };
    BlockCopyState *s = new_copy(&o);
    BlockCopyStats st;

    assert_int_equal(run_sync(s, NULL), 0);
    block_copy_get_stats(s, &st);
    assert_int_equal(st.bytes_offloaded, 0);
    assert_int_equal(st.bytes_read, len);
    assert_int_equal(st.bytes_written, len);
    copy_close(s, &e, src, dst);
    expect_file(tp, data, len);
    g_free(data);
}

/*
 * While someone else writes above the source (a guest through an export
 * of an overlay, as in intermediate commit), the background offloads go
 * one at a time; with no such write (one made before the engine started
 * does not count) two run at once.  The engine reads the file under a
 * raw node, the "guest" writes through the raw node.  Order, not timing:
 * the engine starts a second offload while the first is in the thread
 * pool, unless it narrowed.
 */
static void test_offload_narrow(void **state)
{
    const size_t len = 4 * MiB;
    uint8_t *data = g_malloc(len), *guest = g_malloc(4096);
    fill_nonzero(data, len, 15);
    memset(guest, 0x5a, 4096);

    for (int writes = 0; writes < 2; writes++) {
        g_autofree char *sp = make_file("nsrc", data, len);
        g_autofree char *tp = make_file("ndst", NULL, len);
        BlockNode *raw = open_raw_file(sp);
        BlockNode *src = child_node(raw->file);
        BlockNode *dst = open_file(tp);
        BlockBackend *gblk = backend_on(raw, BLK_PERM_WRITE);
        Edges e;

        node_ref(src);
        /* Before the engine: not someone writing during the copy. */
        assert_int_equal(blk_pwrite(gblk, 0, 4096, guest, 0), 0);
        BlockCopyOptions o = {
            .source = edge(&e.src, src, BLK_PERM_CONSISTENT_READ),
            .target = edge(&e.dst, dst, BLK_PERM_WRITE),
            .use_copy_range = true,
        };
        BlockCopyState *s = new_copy(&o);
        BlockCopyStats st;

        if (writes) {
            assert_int_equal(blk_pwrite(gblk, MiB, 4096, guest, 0), 0);
        }
        assert_int_equal(run_sync(s, NULL), 0);
        block_copy_get_stats(s, &st);
        assert_int_equal(st.bytes_offloaded, len);
        if (writes) {
            assert_int_equal(st.peak_offloading, 1);
            assert_int_equal(st.narrowed, st.chunks);
        } else {
            assert_int_equal(st.peak_offloading, 2);
            assert_int_equal(st.narrowed, 0);
        }
        blk_unref(gblk);
        node_unref(raw);
        copy_close(s, &e, src, dst);
        memcpy(data, guest, 4096);
        if (writes) {
            memcpy(data + MiB, guest, 4096);
        }
        expect_file(tp, data, len);
    }
    g_free(data);
    g_free(guest);
}

/*
 * qcow2 to qcow2 (what mirror and commit copy): data clusters of the top
 * and of its backing file go by copy_file_range between the images'
 * files; a compressed cluster, which has no file data to copy, is read
 * and written, and the offload goes on after it; zeroes are zero writes.
 * The target reads what the source reads, and its refcounts are right
 * (qemu-img check), clusters allocated for a refused offload included.
 */
static void test_offload_qcow2(void **state)
{
    const int64_t len = 4 * MiB + 12288;
    g_autofree char *bp = make_qcow2("qbase.qcow2", len, NULL);
    g_autofree char *sp = make_qcow2("qtop.qcow2", len, bp);
    g_autofree char *tp = make_qcow2("qdst.qcow2", len, NULL);
    BlockBackend *base = open_blk(bp);
    write_pattern(base, 0, len, 0x11);
    blk_unref(base);

    BlockBackend *top = open_blk(sp);
    write_pattern(top, MiB, MiB, 0x22);
    assert_int_equal(blk_pwrite_zeroes(top, 2 * MiB + 64 * KiB, 128 * KiB,
                                       0), 0);
    uint8_t *c = g_malloc(64 * KiB);
    memset(c, 0x33, 64 * KiB);
    assert_int_equal(blk_pwrite(top, 3 * MiB, 64 * KiB, c,
                                REQ_WRITE_COMPRESSED), 0);
    g_free(c);
    BlockBackend *dblk = open_blk(tp);
    Edges e;
    BlockCopyOptions o = {
        .source = edge(&e.src, child_node(blk_root(top)),
                       BLK_PERM_CONSISTENT_READ),
        .target = edge(&e.dst, child_node(blk_root(dblk)), BLK_PERM_WRITE),
        .use_copy_range = true,
    };
    BlockCopyState *s = new_copy(&o);
    BlockCopyStats st;

    assert_int_equal(run_sync(s, NULL), 0);
    block_copy_get_stats(s, &st);
    /* The compressed cluster's chunk at least was read and written. */
    assert_true(st.bytes_written >= 64 * KiB);
    assert_int_equal(st.bytes_read, st.bytes_written);
    /* Past it the offload went on: the last MiB came by copy too. */
    assert_true(st.bytes_offloaded >= 3 * MiB);
    assert_int_equal(st.bytes_offloaded + st.bytes_written + st.bytes_zeroed,
                     len);
    assert_int_equal(st.bytes_zeroed, 128 * KiB);
    block_copy_free(s);
    blk_unref(e.src);
    blk_unref(e.dst);

    uint8_t *want = g_malloc(len), *got = g_malloc(len);
    assert_int_equal(blk_pread(top, 0, len, want, 0), 0);
    assert_int_equal(blk_pread(dblk, 0, len, got, 0), 0);
    assert_memory_equal(got, want, len);
    blk_unref(top);
    blk_unref(dblk);
    g_free(want);
    g_free(got);

    int status = -1;
    const char *argv[] = { "qemu-img", "check", "-q", tp, NULL };
    g_free(run_capture(argv, &status));
    assert_int_equal(status, 0);
}

typedef struct RangeCall {
    BlockChild *src, *dst;
    int64_t src_off, dst_off, bytes;
    int ret;
} RangeCall;

static void range_call_co(void *opaque)
{
    RangeCall *c = opaque;
    c->ret = child_co_copy_range(c->src, c->src_off, c->dst, c->dst_off,
                                 c->bytes, 0, 0);
}

static int range_call(BlockChild *src, int64_t so, BlockChild *dst,
                      int64_t doff, int64_t bytes)
{
    RangeCall c = { src, dst, so, doff, bytes, 1 };
    co_run_sync(range_call_co, &c);
    return c.ret;
}

/* The core entry: what it refuses, and what it copies. */
static void test_copy_range_core(void **state)
{
    const size_t len = 256 * KiB;
    uint8_t *data = g_malloc(len);
    fill_nonzero(data, len, 15);
    g_autofree char *sp = make_file("ksrc", data, len);
    g_autofree char *tp = make_file("kdst", NULL, 2 * len);
    BlockNode *src = open_file(sp), *dst = open_file(tp);
    BlockBackend *sb, *db, *rb;
    BlockChild *s = edge(&sb, src, BLK_PERM_CONSISTENT_READ);
    BlockChild *d = edge(&db, dst, BLK_PERM_WRITE);
    BlockChild *r = edge(&rb, dst, BLK_PERM_CONSISTENT_READ);

    /* Copied to another offset, odd sizes and all (the page cache). */
    assert_int_equal(range_call(s, 1000, d, len + 7, 5000), 0);
    /* Past the source's end: the copy cannot give zeroes. */
    assert_int_equal(range_call(s, len - 4096, d, 0, 8192), -ENOTSUP);
    /* Without the write permission. */
    assert_int_equal(range_call(s, 0, r, 0, 4096), -EPERM);
    assert_int_equal(range_call(s, -1, d, 0, 4096), -EIO);
    assert_int_equal(range_call(s, 0, d, 0, 0), 0);
    blk_unref(sb);
    blk_unref(db);
    blk_unref(rb);
    node_unref(dst);

    /* detect-zeroes on the target: the write path must see the data. */
    dst = open_json(json_pack("{s:s, s:s, s:s}", "driver", "file",
                              "filename", tp, "detect-zeroes", "on"));
    d = edge(&db, dst, BLK_PERM_WRITE);
    s = edge(&sb, src, BLK_PERM_CONSISTENT_READ);
    assert_int_equal(range_call(s, 0, d, 0, 4096), -ENOTSUP);
    blk_unref(sb);
    blk_unref(db);
    node_unref(src);
    node_unref(dst);

    uint8_t *out = read_file(tp, 2 * len);
    assert_memory_equal(out + len + 7, data + 1000, 5000);
    g_free(out);
    g_free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_copy_equal),
        cmocka_unit_test(test_chunk_growth),
        cmocka_unit_test(test_zero_ranges),
        cmocka_unit_test(test_target_reads_zeroes),
        cmocka_unit_test(test_skip_classify),
        cmocka_unit_test(test_read_error),
        cmocka_unit_test(test_write_error),
        cmocka_unit_test(test_recording_bitmap),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_dirty_api),
        cmocka_unit_test(test_read_only_mode),
        cmocka_unit_test(test_compress),
        cmocka_unit_test(test_offload),
        cmocka_unit_test(test_offload_fallback),
        cmocka_unit_test(test_offload_narrow),
        cmocka_unit_test(test_offload_qcow2),
        cmocka_unit_test(test_copy_range_core),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
